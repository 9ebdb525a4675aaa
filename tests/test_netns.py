"""Zero configuration for real: nodes in Linux network namespaces joined by a bridge (issue 4).

The test builds, only inside namespaces it creates (nothing touches the host's interfaces):

    ns "<tag>s"  (the switch):  bridge br0 with ports p0, p1, p2
    ns "<tag>0" .. "<tag>2":    eth0 (veth, peer pK in the switch)  10.77.X.(K+1)/24,  lo up

The addresses are added with and without a broadcast address (`brd +`): container runtimes
and namespaces often set none, and discovery must work there too (issue 13).

and starts `tscale up` with no flags at all in each node namespace (default ports 7400/7401,
UDP beacons on), so the nodes can only find each other through discovery.  A small agent
process inside each namespace (a tscale.Client on 127.0.0.1:7400, driven over JSON lines on
stdin/stdout) reads status, subscribes and publishes there.

Partition: the switch-side veth of one node goes down; each side must keep serving its own
subscribers; when it comes back up they must merge into one overlay, and events cross again,
never duplicated.  Every namespace (and with it every veth and the bridge) is deleted and every
process killed by pid in the fixture finalizer, also when the test fails.
"""
from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterkit import duplicates, one_tree_problem, overlay_view, write_figures
from conftest import DEADLINE, START_DEADLINE, Node, clean_env, uniq, wait_until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="network namespaces need root (CI runs these tests as root)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="the `ip` tool (iproute2) is not installed"),
]

IP_TIMEOUT = 10.0
NODES = 3

# Runs inside a namespace: one tscale.Client on the node there, driven by JSON lines.
AGENT = r'''
import json, sys, threading, time
import tscale

lock = threading.Lock()

def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

deadline = time.monotonic() + float(sys.argv[1])
client = None
while client is None:
    try:
        client = tscale.Client("127.0.0.1:7400", name="netns-agent", connect_timeout=1.0)
    except Exception as exc:
        if time.monotonic() > deadline:
            emit({"ready": False, "error": repr(exc)})
            sys.exit(1)
        time.sleep(0.1)
emit({"ready": True, "info": client.info})
subs = {}
for line in sys.stdin:
    try:
        cmd = json.loads(line)
    except ValueError:
        continue
    req = cmd.get("req")
    try:
        op = cmd["op"]
        res = True
        if op == "status":
            res = client.status(timeout=5.0)["cluster"]
        elif op == "sub":
            key = cmd["key"]
            def cb(msg, key=key):
                emit({"ev": key, "name": msg.name, "data": msg.data.decode()})
            subs[key] = client.subscribe(cmd["pattern"], cb=cb, confirm=cmd.get("confirm", "node"))
        elif op == "pub":
            for name, data in cmd["events"]:
                client.publish(name, data.encode())
            client.flush()
        elif op == "quit":
            emit({"req": req, "ok": True})
            break
        emit({"req": req, "ok": True, "result": res})
    except Exception as exc:
        emit({"req": req, "ok": False, "error": repr(exc)})
client.close(1.0)
'''


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NsNode(Node):
    """`tscale up` with no flags at all, inside network namespace `ns`."""

    def __init__(self, tmp_dir: Path, ns: str):
        home = Path(tmp_dir) / "home"
        home.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp_dir, workers=2, use_flags=False, port=7400,
                         env={"TSCALE_NO_DISCOVERY": "0", "HOME": str(home), "XDG_DATA_HOME": str(home / "data")})
        self.ns = ns
        self.log_path = Path(tmp_dir) / f"node-{ns}.log"

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] + super().argv()


class Agent:
    """A client process inside a namespace; also usable by clusterkit's overlay checks (node_id, cluster())."""

    def __init__(self, ns: str, script: Path, log_path: Path, name: str):
        self.ns = ns
        self.name = name
        self._err = open(log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script), str(START_DEADLINE)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     env=clean_env(), start_new_session=True)
        self.replies: "queue.Queue[dict]" = queue.Queue()
        self.lock = threading.Lock()
        self.events: dict[str, list[tuple[str, str]]] = {}
        self.ready: "queue.Queue[dict]" = queue.Queue()
        self.node_id: str | None = None
        self._req = 0
        self._call_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in iter(self.proc.stdout.readline, b""):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "ev" in obj:
                with self.lock:
                    self.events.setdefault(obj["ev"], []).append((obj["name"], obj["data"]))
            elif "ready" in obj:
                self.ready.put(obj)
            else:
                self.replies.put(obj)

    def wait_ready(self, timeout: float = START_DEADLINE + 10) -> None:
        try:
            obj = self.ready.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"agent in {self.ns} did not connect within {timeout:g}s") from None
        assert obj["ready"], f"agent in {self.ns}: {obj}"
        self.node_id = obj["info"]["node_id"]

    def call(self, op: str, timeout: float = 15.0, **kw):
        with self._call_lock:
            self._req += 1
            req = self._req
            self.proc.stdin.write((json.dumps({"op": op, "req": req, **kw}) + "\n").encode())
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"agent in {self.ns}: no answer to {op} within {timeout:g}s")
                try:
                    obj = self.replies.get(timeout=left)
                except queue.Empty:
                    continue
                if obj.get("req") != req:
                    continue        # a late answer to an earlier call that timed out
                if not obj["ok"]:
                    raise AssertionError(f"agent in {self.ns}: {op} failed: {obj['error']}")
                return obj.get("result")

    def cluster(self, timeout: float = 5.0) -> dict:
        return self.call("status", timeout=timeout + 2)

    def sub(self, key: str, pattern: str, confirm: str = "cluster") -> None:
        self.call("sub", key=key, pattern=pattern, confirm=confirm)

    def pub(self, events: list[tuple[str, str]]) -> None:
        self.call("pub", events=[list(e) for e in events])

    def got(self, key: str) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.events.get(key, []))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=3.0)
            except (AssertionError, OSError, ValueError):
                pass
            try:
                self.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)   # its own session: only this agent
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self._err.close()


class Lab:
    """Namespaces, veths and a bridge, all inside namespaces created here."""

    def __init__(self, tmp_path: Path, brd: bool = True):
        self.brd = brd
        self.tag = f"ts{os.getpid()}{random.randrange(16 ** 3):03x}"
        self.subnet = 10 + os.getpid() % 240          # 10.77.<subnet>.0/24, private to these namespaces
        self.switch = self.tag + "s"
        self.node_ns = [f"{self.tag}{k}" for k in range(NODES)]
        self.created: list[str] = []
        self.tmp = tmp_path
        self.nodes: list[NsNode] = []
        self.agents: list[Agent] = []
        self.script = tmp_path / "agent.py"
        self.script.write_text(AGENT)

    def addr(self, k: int) -> str:
        return f"10.77.{self.subnet}.{k + 1}"

    def build(self) -> None:
        for ns in [self.switch] + self.node_ns:
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for k, ns in enumerate(self.node_ns):
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{k}", "netns", self.switch)
            ip("-n", self.switch, "link", "set", f"p{k}", "master", "br0")
            ip("-n", self.switch, "link", "set", f"p{k}", "up")
            ip("-n", ns, "addr", "add", f"{self.addr(k)}/24", *(["brd", "+"] if self.brd else []), "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def port(self, k: int, up: bool) -> None:
        """The switch side of node k's veth: down = node k is cut off, up = connected again."""
        ip("-n", self.switch, "link", "set", f"p{k}", "up" if up else "down")

    def start(self) -> None:
        for k, ns in enumerate(self.node_ns):
            d = self.tmp / f"node{k}"
            d.mkdir(parents=True, exist_ok=True)
            n = NsNode(d, ns)
            self.nodes.append(n)
            n.spawn()
        for k, ns in enumerate(self.node_ns):
            self.agents.append(Agent(ns, self.script, self.tmp / f"agent{k}.log", name=f"node{k}"))
        for a in self.agents:
            a.wait_ready()

    def teardown(self) -> list[str]:
        problems = []
        for a in self.agents:
            try:
                a.stop()
            except Exception as exc:
                problems.append(f"agent {a.ns}: {exc!r}")
        for n in self.nodes:
            try:
                n.stop()
            except Exception as exc:
                problems.append(f"node {n.ns}: {exc!r}")
        for ns in reversed(self.created):   # deleting a namespace deletes its veth ends and the bridge
            r = ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
        left = [ns for ns in self.created if ns in ip("netns", "list", check=False).stdout.split()]
        if left:
            problems.append(f"namespaces left behind: {left}")
        return problems

    def logs(self) -> str:
        return "\n".join(f"--- {n.ns}\n{n.log_text()[-2500:]}" for n in self.nodes)


def interest_report(agents) -> str:
    """Each node's links and interest when a step fails: it tells a subscription that never
    reached the publishing node from events lost on the way (the logs say neither)."""
    out = []
    for k, ag in enumerate(agents):
        try:
            c = ag.cluster()    # (status is rebuilt once a second)

            def user(rows):     # the test's own subscriptions, not the nodes' internal $ names
                return [r for r in rows if not r[0].startswith("$")][:10]
            links = {m[:8]: user(v) for m, v in c["interest"]["links"].items()}
            out.append(f"node {k}: links {[(x['peer'][:8], x['role']) for x in c['links']]}, "
                       f"local interest {user(c['interest']['local'])}, interest per link {links}")
        except Exception as e:   # a node that cannot answer is itself the finding
            out.append(f"node {k}: no status ({e!r})")
    return "\n".join(out)


@pytest.fixture(params=[False, True], ids=["no-brd", "brd"])
def lab(request, tmp_path):
    lab = Lab(tmp_path, brd=request.param)
    try:
        lab.build()
        yield lab
    finally:
        problems = lab.teardown()
        assert not problems, f"cleanup problems: {problems}"


def wait_tree(agents, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    last = {"why": None}

    def ok():
        why = one_tree_problem(agents, overlay_view(agents))
        last["why"] = why
        return why is None

    try:
        wait_until(ok, timeout, 0.1, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last['why']}") from None
    return time.monotonic() - t0


def numbered(prefix: str, start: int, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix}.{i % 8}", str(i)) for i in range(start, start + count)]


def exactly(got: list[tuple[str, str]], want: set[str], who: str) -> None:
    data = [d for _, d in got]
    dup = duplicates(data)
    assert not dup, f"{who}: duplicated events {dict(list(dup.items())[:10])}"
    assert set(data) == want, f"{who}: missing {sorted(want - set(data))[:10]}, unexpected {sorted(set(data) - want)[:10]}"


@pytest.mark.timeout(240)
def test_zero_config_discovery_partition_and_merge(lab, tmp_path):
    t_start = time.monotonic()
    lab.start()
    a = lab.agents
    figures: dict = {}
    try:
        # 1. No flags at all: the nodes find each other by UDP beacons and form one overlay.
        wait_tree(a, 45.0, "3 nodes with no flags to form one overlay")
        figures["formed_s_after_start"] = round(time.monotonic() - t_start, 3)
        # each node learnt the others' addresses on the bridge, and its own (it listens on 0.0.0.0)
        addresses = sorted(m["address"] for m in a[0].cluster()["members"] if not m["self"])
        assert addresses == sorted(f"{lab.addr(k)}:7400" for k in range(1, NODES)), addresses
        for k, ag in enumerate(a):
            own = wait_until(lambda: (c := ag.cluster())["address_source"] == "peers" and c, DEADLINE,
                             what=f"node {k} to learn its own address from a peer")
            me = [m["address"] for m in own["members"] if m["self"]]
            assert own["address"] == f"{lab.addr(k)}:7400" and me == [own["address"]], (own["address"], me)

        # ... and route an event from the first to the last.
        p = uniq("nz")
        a[2].sub("first", p + ".>")
        a[0].pub(numbered(p, 0, 50))
        wait_until(lambda: len(a[2].got("first")) >= 50, DEADLINE, what="events from node 0 at node 2")

        # 2. Partition: node 2's switch port goes down.
        cut = 2
        side_a, side_b = [a[0], a[1]], [a[cut]]
        t_cut = time.monotonic()
        lab.port(cut, up=False)
        wait_tree(side_a, 30.0, "side A (nodes 0, 1) to be one overlay without node 2")
        wait_tree(side_b, 30.0, "node 2 to be on its own")
        figures["partition_seen_s"] = round(time.monotonic() - t_cut, 3)

        # Both sides keep serving their own subscribers.
        pa, pb = uniq("pa"), uniq("pb")
        a[0].sub("side_a", pa + ".>")
        a[1].pub(numbered(pa, 0, 100))
        a[cut].sub("side_b", pb + ".>")
        a[cut].pub(numbered(pb, 0, 100))
        wait_until(lambda: len(a[0].got("side_a")) >= 100, DEADLINE, what="side A serving its subscriber")
        wait_until(lambda: len(a[cut].got("side_b")) >= 100, DEADLINE, what="side B serving its subscriber")

        # 3. Heal: the port comes back; the two sides merge into one overlay again.
        t_heal = time.monotonic()
        lab.port(cut, up=True)
        wait_tree(a, 45.0, "the two sides to merge into one overlay")
        figures["merged_s_after_link_up"] = round(time.monotonic() - t_heal, 3)
        for ag in a:
            c = ag.cluster()
            assert {m["id"] for m in c["members"]} >= {x.node_id for x in a}
            # every other node is known by its address on the bridge (a member entry without a host
            # would leave the workers without a peer link: events to it silently dropped)
            bad = [m["address"] for m in c["members"] if not m["self"] and not m["address"].startswith("10.77.")]
            assert not bad, f"{ag.name} knows members without an address: {bad}"

        # Events cross again, in both directions, exactly once.
        pm = uniq("pm")
        a[0].sub("merged0", pm + ".>")
        a[cut].sub("merged2", pm + ".>")
        t_cross = time.monotonic()
        a[0].pub(numbered(pm, 0, 100))
        a[cut].pub(numbered(pm, 100, 100))
        for k in (0, cut):
            wait_until(lambda: len(a[k].got(f"merged{k}")) >= 200, DEADLINE,
                       what=f"merged traffic at node {k} (have {len(a[k].got(f'merged{k}'))}: "
                            f"{sum(1 for _, d in a[k].got(f'merged{k}') if int(d) < 100)} from node 0, "
                            f"{sum(1 for _, d in a[k].got(f'merged{k}') if int(d) >= 100)} from node 2)")
        figures["events_cross_again_s_after_link_up"] = round(time.monotonic() - t_heal, 3)
        figures["first_crossing_round_trip_s"] = round(time.monotonic() - t_cross, 3)
        # a last marker from each side: once it is in, any stray copy would have been too
        a[0].pub([(pm + ".end", "end0")])
        a[cut].pub([(pm + ".end", "end2")])
        for k in (0, cut):
            wait_until(lambda: {"end0", "end2"} <= {d for _, d in a[k].got(f"merged{k}")}, DEADLINE,
                       what=f"end markers at node {k}")
        want = {str(i) for i in range(200)} | {"end0", "end2"}
        exactly(a[0].got("merged0"), want, "node 0 after the merge")
        exactly(a[cut].got("merged2"), want, "node 2 after the merge")
        exactly(a[2].got("first"), {str(i) for i in range(50)}, "node 2 before the partition")
        exactly(a[0].got("side_a"), {str(i) for i in range(100)}, "side A")
        exactly(a[cut].got("side_b"), {str(i) for i in range(100)}, "side B")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{interest_report(a)}\nnode logs:\n{lab.logs()}") from None
    finally:
        path = write_figures(tmp_path / "netns-figures.json", figures)
        print(f"\nnetns figures ({path}):\n{json.dumps(figures, indent=2)}")
