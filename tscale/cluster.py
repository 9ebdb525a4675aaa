"""Cluster control plane, run by the supervisor: discovery, links, interest.

It is never on the path of an event.  It finds other nodes (UDP beacons,
--join seeds, gossip), keeps this node's overlay links (one parent, some
children; see overlay.py) alive with heartbeats, aggregates interest per link
(interest.py) and tells the workers which peers exist and what each wants.
Workers then carry events to peers themselves.

Control frames (msgpack arrays) between supervisors, over the control port
(= listen port + worker count), DEALER (child, prober) -> ROUTER (parent):
  [PROBE, info, members] -> [MEMBERS, info, members]
  [ATTACH, info, members, last_resort] -> [ACCEPT, info, members] | [REFUSE, info, reason, members]
  [HB, gossip|nil, sent_at, echo_of]      both ways every 0.5 s; gossip = deltas (Overlay.gossip_delta):
                                           full entries and [id, hb, stats] liveness refreshes
  The info entry of PROBE and ATTACH carries "to" (the host the sender dialed), that of
  MEMBERS, ACCEPT and REFUSE "saw" (the address the request came from): how a node bound
  to 0.0.0.0 learns its own address.
  [INTEREST, seq, replace, [[pattern, group, count_or_delta], ...]]
  [RESYNC]                                 ask for a full INTEREST snapshot
  [SYNC, token] -> [SYNC_ACK, token]       interest barrier (confirmed subscribe)
  [BYE]                                    the node stops
  [BYE, "moved"]                           only this link ends: the child moved to a shallower
                                           parent, or the parent made room for a lower-ranked child
"""
from __future__ import annotations

import hmac
import itertools
import logging
import random
import socket
import time

import psutil
import zmq

from . import bus
from .client_core import ClientCore
from .keys import beacon_mac
from .config import parse_hostport
from .discovery import beacon_targets
from .frames import decode_beacon, decode_control, decode_node
from .handover import WorkerInterests
from .interest import InterestLinks
from .overlay import Overlay
from .protocol import ACCEPT, ATTACH, HB, INTEREST, MEMBERS, PROBE, REFUSE, RESYNC, SYNC, SYNC_ACK, WELCOME, pack
from .protocol import CTL_BYE as BYE
from .protocol import ProtocolError

HB_EVERY = 0.5
BEACON_EVERY = 1.0
SEEK_EVERY = 2.0          # roots probe seeds / unknown beacon senders / a random member
RESEED_EVERY = 5          # every node re-probes its seeds every 5 x SEEK_EVERY
ATTACH_TIMEOUT = 1.0
PROBE_TIMEOUT = 2.0
BARRIER_TIMEOUT = 3.0
BEACON_MAGIC = b"TSCALE1\x00"
BAD_LOG_EVERY = 5.0       # seconds between two log lines about undecodable control input

log = logging.getLogger("cluster")


class _Barrier:
    __slots__ = ("reply_to", "waiting", "deadline")

    def __init__(self, reply_to, waiting: set, deadline: float):
        self.reply_to = reply_to
        self.waiting = waiting
        self.deadline = deadline


class ClusterControl:
    def __init__(self, sup, cluster: str, host: str, port: int, workers: int, join: list[str],
                 discovery: bool, discovery_port: int, advertise: str, node_id: str, name: str,
                 security):
        self.sup = sup
        self.sec = security
        self.secret = security.cluster_secret   # "" = open cluster
        self.ctx: zmq.Context = sup.ctx
        self.bind_host = host
        self.ctl_port = port + workers
        adv_host, adv_port = parse_hostport(advertise, port) if advertise else (host, port)
        wildcard = adv_host in ("0.0.0.0", "", "*")
        # Where the others reach us.  Bound to every interface without --advertise, we learn it
        # from the first peer that reaches us, or that we reach (see _own_host).
        self.address_source = "advertise" if advertise else (None if wildcard else "listen")
        me = {"id": node_id, "name": name, "cluster": cluster,
              "host": None if wildcard else adv_host,
              "port": adv_port, "ctl": self.ctl_port + (adv_port - port), "workers": workers,
              "started": time.time(), "v": 1}
        if security.mechanism == "curve":
            me["ck"] = security.server_public   # the key other nodes' workers connect to ours with
        self.overlay = Overlay(me)
        self.links = InterestLinks()          # interest per link, Clone-pattern sync (interest.py)
        self.interest = self.links.table
        self.workers = WorkerInterests()    # each worker's interest, by epoch (handover.py)
        self.seeds = [parse_hostport(s) for s in join]
        self.discovery = discovery
        self.discovery_port = discovery_port
        self.parent_sock: zmq.Socket | None = None    # DEALER to our parent
        # DEALER to the node we asked (ATTACH); on ACCEPT it becomes parent_sock (for a move:
        # after a BYE "moved" to the old parent, whose socket closes then)
        self.pending_sock: zmq.Socket | None = None
        self.probes: dict[str, tuple] = {}        # endpoint -> (socket, deadline, kind)
        self.beaconed: dict[str, tuple] = {}      # node id -> (ip, ctl) heard by beacon
        self.rtt: dict[str, float] = {}
        self.ctl_msgs: dict[str, int] = {}
        self.barriers: dict[int, _Barrier] = {}
        self.next_token = 1
        self.next_hb = self.next_beacon = self.next_seek = 0.0
        self.udp: socket.socket | None = None
        self.bound_udp: dict[str, socket.socket] = {}   # source address -> socket for limited broadcast
        self.rnd = random.Random()
        self.seeks = 0
        self.bad_frames = 0       # control frames and beacons that failed frames.decode_*, dropped
        self.bad_logged = -1e9

    # -- sockets ----------------------------------------------------------------
    def open(self, poller: zmq.Poller):
        r = self.router = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a node that reconnects replaces its stale link
        r.setsockopt(zmq.LINGER, 0)
        self.sec.serve_control(r)       # CURVE with the cluster's derived key pair, if there is a secret
        r.bind(f"tcp://{self.bind_host}:{self.ctl_port}")
        self.poller = poller
        poller.register(r, zmq.POLLIN)
        if self.discovery:
            u = self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            u.bind(("", self.discovery_port))
            u.setblocking(False)
            poller.register(u.fileno(), zmq.POLLIN)
        log.info("cluster %r: control port %d, discovery %s, seeds %s", self.overlay.me["cluster"], self.ctl_port,
                 f"on UDP {self.discovery_port}" if self.discovery else "off",
                 ", ".join(f"{h}:{p}" for h, p in self.seeds) or "none")

    def close(self):
        for mid in self.overlay.neighbours():
            self._send(mid, pack([BYE]))
        if self.udp is not None:
            self._beacon(bye=True)
            self.udp.close()
        for s in self.bound_udp.values():
            s.close()
        for sock, _, _ in self.probes.values():
            sock.close(0)
        if self.parent_sock is not None:
            self.parent_sock.close(100)
        if self.pending_sock is not None:
            self.pending_sock.close(0)
        self.router.close(100)

    def _dealer(self, endpoint: str, identity: bool | str, worker_port: bool = False) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if worker_port:
            self.sec.peer_client(s, None)
        else:
            self.sec.control_client(s)
        # No IMMEDIATE: with it, the first (blocking) send of a PROBE, seed HELLO or ATTACH to an
        # endpoint that does not answer blocks the whole control loop forever.  Without it the frame
        # waits in the pipe and the probe/attach time-outs clean up.
        if identity:
            s.setsockopt(zmq.IDENTITY, (identity if isinstance(identity, str) else self.overlay.id).encode())
        s.connect(endpoint)
        self.poller.register(s, zmq.POLLIN)
        return s

    def _drop_socket(self, s: zmq.Socket, linger: int = 0):
        try:
            self.poller.unregister(s)
        except KeyError:
            pass
        s.close(linger)

    def _endpoint(self, info: dict) -> str | None:
        host = info.get("host")
        return f"tcp://{host}:{info['ctl']}" if host else None

    # -- sending ---------------------------------------------------------------------
    def _send(self, mid: str, frame: bytes) -> bool:
        if mid == self.overlay.parent or mid == self.overlay.pending_parent:
            s = self.parent_sock if mid == self.overlay.parent else self.pending_sock
            if s is None:
                return False
            try:
                s.send(frame, zmq.NOBLOCK)
                return True
            except zmq.ZMQError:
                return False
        return self._reply(mid, frame)

    def _reply(self, mid: str, frame: bytes) -> bool:
        """Send on the control ROUTER; never raises.  With ROUTER_MANDATORY a peer that went
        away (a partition, a probe that gave up) is EHOSTUNREACH: that is news, not a crash."""
        try:
            self.router.send_multipart([mid.encode(), frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def _do(self, actions: list):
        """Carry out what InterestLinks asked for."""
        for a in actions:
            if a[0] == "interest":
                if not self._send(a[1], pack([INTEREST, a[2], a[3], a[4]])):
                    self.links.send_failed(a[1])
            elif a[0] == "resync":
                self._send(a[1], pack([RESYNC]))
            else:
                self._publish_peer_interest(a[1], a[3], a[2])

    # -- bus towards the workers -------------------------------------------------------
    def peers_doc(self) -> dict:
        out = {}
        for mid in self.overlay.neighbours():
            info = self.overlay.members.get(mid)
            if info and info.get("host"):
                out[mid] = {"host": info["host"], "ports": [info["port"] + i for i in range(info["workers"])],
                            "name": info.get("name", ""), "ck": info.get("ck")}
        return out

    def _publish_peers(self):
        self.sup.bus_all([bus.PEERS, bus.SUPERVISOR, self.peers_doc()])

    def _publish_peer_interest(self, mid: str, entries, replace: bool):
        self.sup.bus_all([bus.PEER_INTEREST, bus.SUPERVISOR, mid, replace, [list(e) for e in entries]])

    def worker_snapshot(self, k: int, epoch: int):
        """Everything a (re)started worker needs about the cluster."""
        tables = {mid: [[p, g, n] for (p, g), n in t.items()] for mid, t in self.interest.links.items()}
        self.sup.bus_to(k, [bus.CLUSTER_SNAPSHOT, bus.SUPERVISOR, epoch, self.peers_doc(), tables])

    # -- from the workers ----------------------------------------------------------------
    def worker_hello(self, k: int, epoch: int):
        self._local(self.workers.hello(k, epoch))

    def local_interest(self, k: int, epoch: int, replace: bool, entries):
        self._local(self.workers.report(k, epoch, bool(replace), entries))

    def worker_down(self, k: int):
        self._local(self.workers.down(k))

    def _local(self, changes: list):
        self._do(self.links.local(changes))

    def confirm(self, k: int, token: int, now: float):
        """A worker asks: tell me when every reachable node has our interest."""
        self._start_barrier(("worker", k, token), None, now, local_workers=False)

    def worker_synced(self, token: int, k: int):
        b = self.barriers.get(token)
        if b is not None:
            b.waiting.discard(("w", k))
            self._maybe_finish(token)

    # -- barriers ---------------------------------------------------------------------
    def _start_barrier(self, reply_to, exclude: str | None, now: float, local_workers: bool):
        token = self.next_token
        self.next_token += 1
        waiting = set()
        for mid in self.overlay.neighbours():
            if mid != exclude and self._send(mid, pack([SYNC, token])):
                waiting.add(mid)
        if local_workers:
            for w in self.sup.workers:
                if w.alive:
                    waiting.add(("w", w.index))
            self.sup.bus_all([bus.SYNC_REQ, bus.SUPERVISOR, token])
        self.barriers[token] = _Barrier(reply_to, waiting, now + BARRIER_TIMEOUT)
        self._maybe_finish(token)

    def _maybe_finish(self, token: int, force: bool = False):
        b = self.barriers.get(token)
        if b is None or (b.waiting and not force):
            return
        del self.barriers[token]
        kind = b.reply_to[0]
        if kind == "worker":
            self.sup.bus_to(b.reply_to[1], [bus.CONFIRMED, bus.SUPERVISOR, b.reply_to[2]])
        else:
            self._send(b.reply_to[1], pack([SYNC_ACK, b.reply_to[2]]))

    # -- input ------------------------------------------------------------------------
    def handle(self, ready: list, now: float) -> bool:
        """Process ready sockets that belong to us; returns True if any did."""
        mine = False
        for sock, _ in ready:
            if sock is self.router:
                mine = True
                self._drain_router(now)
            elif sock is self.parent_sock:
                mine = True
                self._drain_parent(now)
            elif sock is self.pending_sock:
                mine = True
                self._drain_pending(now)
            elif self.udp is not None and sock == self.udp.fileno():
                mine = True
                self._drain_udp(now)
            else:
                for ep, (ps, _, kind) in list(self.probes.items()):
                    if ps is sock:
                        mine = True
                        self._drain_probe(ep, ps, kind, now)
        return mine

    def _drain_router(self, now: float):
        while True:
            try:
                ident, frame = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except ValueError:
                continue
            cmd = self._decode(frame.bytes, "control port")
            try:
                mid = ident.bytes.decode()
            except UnicodeDecodeError:
                cmd = self._bad("control port", "routing id is not UTF-8")
            if cmd is None:
                continue
            peer_ip = frame.get("Peer-Address")
            self._on_message(mid, cmd, now, peer_ip, via_router=True)

    def _drain_parent(self, now: float):
        while self.parent_sock is not None:
            try:
                frame = self.parent_sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            cmd = self._decode(frame.bytes, "parent link")
            if cmd is None:
                continue
            mid = self.overlay.parent
            if mid is not None:
                self._on_message(mid, cmd, now, frame.get("Peer-Address"), via_router=False)

    def _drain_pending(self, now: float):
        while self.pending_sock is not None:
            try:
                frame = self.pending_sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            cmd = self._decode(frame.bytes, "attach request")
            if cmd is None:
                continue
            mid = self.overlay.pending_parent
            if mid is not None:
                self._on_message(mid, cmd, now, frame.get("Peer-Address"), via_router=False)

    def _decode(self, frame: bytes, where: str):
        """frames.decode_control, counting and logging (rate-limited) what it refuses."""
        try:
            return decode_control(frame)
        except ProtocolError as exc:
            return self._bad(where, exc.message)

    def _bad(self, where: str, why: str) -> None:
        self.bad_frames += 1
        now = time.monotonic()
        if now - self.bad_logged >= BAD_LOG_EVERY:
            self.bad_logged = now
            log.warning("dropped undecodable cluster input (%s): %s; %d so far", where, why, self.bad_frames)
        return None

    def _fix_host(self, info: dict, peer_ip: str | None):
        if not info.get("host") and peer_ip:
            info["host"] = peer_ip

    def _on_message(self, mid: str, cmd: list, now: float, peer_ip, via_router: bool):
        ov = self.overlay
        code = cmd[0]
        self.ctl_msgs[mid] = self.ctl_msgs.get(mid, 0) + 1
        if mid in ov.neighbours():
            ov.heard_from(mid, now)
        if code == HB:
            if cmd[1]:   # gossip deltas: the sender's own entry, if it is in, comes first
                first = cmd[1][0]
                self._learn(cmd[1], now, peer_ip if type(first) is dict and first.get("id") == mid else None)
            if cmd[2] is not None:   # echo the sender's clock so it can measure the round trip
                self._send(mid, pack([HB, None, None, cmd[2]]))
            if cmd[3] is not None:
                self.rtt[mid] = max(0.0, time.monotonic() - cmd[3])
            if mid in ov.neighbours():
                self._do(self.links.heard(mid))
            return
        if code in (PROBE, ATTACH) and via_router:
            self._own_host(cmd[1].pop("to", None))   # the address the prober dialed: ours
        elif code in (ACCEPT, REFUSE) and not via_router:
            self._own_host(cmd[1].pop("saw", None))  # the address the answerer saw us at
        if code == PROBE and via_router:
            self._fix_host(cmd[1], peer_ip)
            self._learn([cmd[1]] + list(cmd[2]), now)
            self._reply(mid, pack([MEMBERS, self._entry(saw=peer_ip), ov.gossip()]))
        elif code == ATTACH and via_router:
            self._fix_host(cmd[1], peer_ip)
            self._learn([cmd[1]] + list(cmd[2]), now)
            why = ov.may_accept_child(mid, len(cmd) > 3 and bool(cmd[3]))
            if why is not None or mid not in ov.members:
                self._reply(mid, pack([REFUSE, self._entry(saw=peer_ip), why or "unknown member", ov.gossip()]))
                return
            fresh = mid not in ov.children
            out = ov.make_room(mid, now)
            if out is not None:    # at the hard cap: a higher-ranked child goes elsewhere
                self._reply(out, pack([BYE, "moved"]))
                self._unlinked(out, now, "moved to make room for a lower-ranked child")
            ov.add_child(mid, now)
            self._reply(mid, pack([ACCEPT, self._entry(saw=peer_ip), ov.gossip()]))
            self._link_up(mid, now)
            if fresh:
                log.info("node %s (%s) attached as child", ov.members[mid].get("name"), mid)
        elif code == ACCEPT and not via_router and mid == ov.pending_parent:
            # the parent's own entry has no host when it listens on 0.0.0.0: take the one we reached
            self._learn([cmd[1]] + list(cmd[2]), now, peer_ip)
            old = ov.accepted(mid, now)
            if old is not None:    # a move to a shallower parent: the old link ends now
                try:
                    self.parent_sock.send(pack([BYE, "moved"]), zmq.NOBLOCK)
                except (zmq.ZMQError, AttributeError):
                    pass
                self._close_parent(linger=200)
                self._unlinked(old, now, "moved to a shallower parent", was_parent=True)
            self._close_parent()
            self.parent_sock, self.pending_sock = self.pending_sock, None
            self._link_up(mid, now)
            log.info("attached to parent %s (%s) at depth %d", ov.members.get(mid, {}).get("name"), mid, ov.depth())
        elif code == REFUSE and not via_router and mid == ov.pending_parent:
            log.info("node %s refused to be our parent: %s", mid, cmd[2])
            if len(cmd) > 3:
                self._learn(cmd[3], now)   # its view holds other candidates
            self._close_pending()
            ov.drop(mid, now, "refused")
        elif code == INTEREST:
            if mid not in ov.neighbours():
                return
            self._do(self.links.receive(mid, cmd[1], cmd[2], cmd[3]))
        elif code == RESYNC:
            if mid in ov.neighbours():
                self._do(self.links.resync(mid))
        elif code == SYNC:
            self._start_barrier(("peer", mid, cmd[1]), mid, now, local_workers=True)
        elif code == SYNC_ACK:
            b = self.barriers.get(cmd[1])
            if b is not None:
                b.waiting.discard(mid)
                self._maybe_finish(cmd[1])
        elif code == BYE:
            if len(cmd) > 1:     # "moved": the link ends, the node lives on
                if mid in ov.neighbours() or mid == ov.pending_parent:
                    self._link_down(mid, now, "moved")
            elif mid in ov.neighbours() or mid == ov.pending_parent:
                self._link_down(mid, now, "bye")
            else:
                ov.forget(mid, now, "bye")

    # -- our own address ------------------------------------------------------------------
    def _entry(self, **hint) -> dict:
        """Our member entry, with a hint for the other side: `to` (the host we dialed) or `saw`
        (the address its connection came from).  The receiver pops it before learning the entry."""
        return dict(self.overlay.my_entry(), **hint)

    def _own_host(self, host) -> None:
        """A peer told us at which address it reaches us.  Taken only while we do not know ours
        (bound to 0.0.0.0, no --advertise), and only if it is an address of one of our interfaces:
        a peer cannot make us announce somebody else's address.  A loopback address is kept only
        until a peer reaches us at another one."""
        me = self.overlay.me
        if self.address_source not in (None, "peers") or type(host) is not str:
            return
        if me["host"] is not None and not me["host"].startswith("127."):
            return
        if host == me["host"] or host not in _local_ipv4():
            return
        me["host"] = host
        self.address_source = "peers"
        log.info("own address learnt from a peer: %s:%s", host, me["port"])

    def own_address(self) -> tuple[str, str]:
        """(HOST:PORT, where it comes from) for status; never None."""
        me = self.overlay.me
        if me["host"] is not None:
            return f"{me['host']}:{me['port']}", self.address_source
        ips = sorted(_local_ipv4(), key=lambda a: (a.startswith("127."), a))
        return f"{ips[0] if ips else '127.0.0.1'}:{me['port']}", "interfaces"

    def _learn(self, infos, now: float, peer_ip=None):
        infos = list(infos)
        if peer_ip and infos:
            self._fix_host(infos[0], peer_ip)
        self.overlay.learn(infos, now)

    def _drain_probe(self, ep: str, s: zmq.Socket, kind: str, now: float):
        try:
            frame = s.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        self._drop_socket(s)
        del self.probes[ep]
        if kind == "seed":   # a seed's worker answers our HELLO with WELCOME: now probe its control port
            try:
                cmd = decode_node(frame.bytes)
            except ProtocolError as exc:
                self._bad("seed " + ep, exc.message)
                return
            if cmd[0] == WELCOME:
                info = cmd[2]
                host = ep.rsplit(":", 1)[0].removeprefix("tcp://")
                ctl = info.get("ctl_port")
                if type(ctl) is int and 0 < ctl < 65536 and info.get("node_id") != self.overlay.id:
                    self._probe(f"tcp://{host}:{ctl}", now)
            return
        cmd = self._decode(frame.bytes, "probe " + ep)
        if cmd is not None and cmd[0] == MEMBERS:
            self._own_host(cmd[1].pop("saw", None))
            self._fix_host(cmd[1], frame.get("Peer-Address"))
            self._learn([cmd[1]] + list(cmd[2]), now)

    def _drain_udp(self, now: float):
        while True:
            try:
                data, (ip, _port) = self.udp.recvfrom(2048)
            except (BlockingIOError, OSError):
                return
            if not data.startswith(BEACON_MAGIC):
                continue
            if self.secret:   # a beacon we cannot verify is not from our cluster: ignored
                data, mac = data[:-16], data[-16:]
                if not hmac.compare_digest(mac, beacon_mac(self.secret, data)):
                    continue
            b = decode_beacon(data[len(BEACON_MAGIC):])
            if b is None:
                self._bad("beacon from " + ip, "not a tscale beacon")
                continue
            mid, cluster, ctl, bye = b
            if mid == self.overlay.id or cluster != self.overlay.me["cluster"]:
                continue
            if bye:
                if mid in self.overlay.neighbours():
                    self._link_down(mid, now, "bye")
                else:
                    self.overlay.forget(mid, now, "bye")
                self.beaconed.pop(mid, None)
                continue
            if mid not in self.overlay.members and mid not in self.beaconed:
                log.info("heard beacon from node %s at %s", mid, ip)
                self._probe(f"tcp://{ip}:{ctl}", now)
            self.beaconed[mid] = (ip, ctl)

    # -- links -------------------------------------------------------------------------
    def _link_up(self, mid: str, now: float):
        self._do(self.links.up(mid))
        self._publish_peers()

    def _link_down(self, mid: str, now: float, why: str):
        ov = self.overlay
        was_parent = mid == ov.parent or mid == ov.pending_parent
        if mid == ov.parent:
            self._close_parent()
        if mid == ov.pending_parent:
            self._close_pending()
        ov.drop(mid, now, why)
        self._unlinked(mid, now, "lost: no heartbeat" if why == "dead" else why, was_parent)

    def _unlinked(self, mid: str, now: float, why: str, was_parent: bool = False):
        """The rest of a link's end, once the overlay has dropped it: interest, workers, barriers."""
        name = self.overlay.members.get(mid, {}).get("name", mid)
        self.rtt.pop(mid, None)
        self._do(self.links.down(mid))
        self._publish_peers()
        for token, b in list(self.barriers.items()):
            if mid in b.waiting:
                b.waiting.discard(mid)
                self._maybe_finish(token)
        (log.info if why.startswith("moved") else log.warning)(
            "link to %s %s (%s); %s", "parent" if was_parent else "child", name, mid, why)

    def _close_parent(self, linger: int = 0):
        if self.parent_sock is not None:
            self._drop_socket(self.parent_sock, linger)
            self.parent_sock = None

    def _close_pending(self):
        if self.pending_sock is not None:
            self._drop_socket(self.pending_sock)
            self.pending_sock = None

    def _probe(self, endpoint: str, now: float):
        if endpoint in self.probes:
            return
        # Not our node id: the peer's ROUTER hands an identity over to its newest connection
        # (ROUTER_HANDOVER), so a probe under our id would cut our link if that peer is our parent.
        s = self._dealer(endpoint, identity=self.overlay.id + "/probe")
        s.send(pack([PROBE, self._entry(to=_host_of(endpoint)), self.overlay.gossip()]))
        self.probes[endpoint] = (s, now + PROBE_TIMEOUT, "probe")

    def _resolve_seed(self, host: str, port: int, now: float):
        ep = f"tcp://{host}:{port}"
        if ep in self.probes:
            return
        s = self._dealer(ep, identity=False, worker_port=True)
        s.send(ClientCore(name=f"tscale-node {self.overlay.me['name']}", lang="tscale-node").hello(direct=False))
        self.probes[ep] = (s, now + PROBE_TIMEOUT, "seed")

    # -- time ------------------------------------------------------------------------------
    def quiet(self) -> bool:
        """Nothing here runs on a deadline shorter than a heartbeat: a node alone, without
        seeds, discovery, probes, barriers or any known member (its heartbeats and seeking have
        nobody to reach).  The supervisor then calls `tick` once per status round (issue 10:
        an idle node wakes about once a second), and every 50 ms otherwise.  O(1)."""
        ov = self.overlay
        return not (self.udp is not None or self.seeds or self.probes or self.barriers or self.beaconed
                    or ov.members or ov.parent or ov.children or ov.pending_parent is not None)

    def tick(self, now: float):
        ov = self.overlay
        for ep, (s, deadline, _) in list(self.probes.items()):
            if now > deadline:
                self._drop_socket(s)
                del self.probes[ep]
        if ov.pending_parent is not None and now - ov.pending_since > ATTACH_TIMEOUT:
            log.info("no answer from prospective parent %s", ov.pending_parent)
            self._close_pending()
            ov.drop(ov.pending_parent, now, "timeout")
        for mid in ov.dead_neighbours(now):
            self._link_down(mid, now, "dead")
        picked = ov.parent_candidate(now)
        if picked is None:
            move = ov.move_candidate(now)     # a shallower parent (make-before-break)
            picked = (move, False) if move is not None else None
        if picked is not None:
            cand, last_resort = picked
            ep = self._endpoint(ov.members[cand])
            if ep is not None:
                ov.asking(cand, now, last_resort)
                self._close_pending()
                self.pending_sock = self._dealer(ep, identity=True)
                self.pending_sock.send(pack([ATTACH, self._entry(to=ov.members[cand]["host"]), ov.gossip(),
                                             last_resort]))
        if now >= self.next_hb:
            self.next_hb = now + HB_EVERY
            ov.tick()
            gossip = ov.hb % 2 == 0
            for mid in ov.neighbours():
                self._send(mid, pack([HB, ov.gossip_delta(mid) if gossip else None, time.monotonic(), None]))
                self._do(self.links.retry(mid))
            ov.expire(now)
        for token, b in list(self.barriers.items()):
            if now > b.deadline:
                log.warning("interest barrier timed out waiting for %s", sorted(map(str, b.waiting)))
                self._maybe_finish(token, force=True)
        if self.udp is not None and now >= self.next_beacon:
            self.next_beacon = now + BEACON_EVERY
            self._beacon()
        if now >= self.next_seek:
            self.next_seek = now + SEEK_EVERY
            self.seeks += 1
            if not (ov.is_root() or not ov.members) and self.seeks % RESEED_EVERY == 0:
                # Everyone re-probes its seeds now and then: the --join graph is connected,
                # so two parts that formed apart always hear of each other again.
                for host, port in self.seeds:
                    self._resolve_seed(host, port, now)
            if ov.is_root() or not ov.members:
                for host, port in self.seeds:
                    self._resolve_seed(host, port, now)
                target = ov.seek_target(self.rnd)
                if target is not None:
                    ep = self._endpoint(ov.members[target])
                    if ep is not None:
                        self._probe(ep, now)
                for mid, (ip, ctl) in list(self.beaconed.items()):
                    if mid not in ov.members:
                        self._probe(f"tcp://{ip}:{ctl}", now)

    def _beacon(self, bye: bool = False):
        me = self.overlay.me
        body = BEACON_MAGIC + pack({"v": 1, "c": me["cluster"], "id": me["id"], "p": me["port"],
                                    "k": me["ctl"], "bye": bye})
        if self.secret:
            body += beacon_mac(self.secret, body)
        for target, source in beacon_targets(psutil.net_if_addrs().values()):
            try:
                self._beacon_socket(source).sendto(body, (target, self.discovery_port))
            except OSError:
                pass

    def _beacon_socket(self, source: str | None) -> socket.socket:
        """The discovery socket, or one bound to `source` (limited broadcast out of that interface)."""
        if source is None:
            return self.udp
        s = self.bound_udp.get(source)
        if s is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setblocking(False)
            try:
                s.bind((source, 0))
            except OSError:
                s.close()
                raise
            self.bound_udp[source] = s
        return s

    # -- status ------------------------------------------------------------------------------
    def status(self, node_totals: dict) -> dict:
        ov = self.overlay
        now = time.monotonic()
        ov.me["stats"] = {"events_in": node_totals.get("events_in", 0),
                          "events_out": node_totals.get("events_out", 0)}
        members = []
        address, source = self.own_address()
        for info in [ov.my_entry()] + list(ov.members.values()):
            st = info.get("stats") or {}
            members.append({"id": info["id"], "name": info.get("name", ""),
                            "address": address if info["id"] == ov.id else f"{info.get('host') or '?'}:{info.get('port')}",
                            "workers": info.get("workers"),
                            "uptime_s": round(time.time() - info.get("started", time.time()), 1),
                            "events_in": st.get("events_in", 0), "events_out": st.get("events_out", 0),
                            "self": info["id"] == ov.id})
        links = []
        for mid in ov.neighbours():
            info = ov.members.get(mid, {})
            links.append({"peer": mid, "name": info.get("name", ""), "role": "parent" if mid == ov.parent else "child",
                          "rtt_ms": round(self.rtt[mid] * 1000, 2) if mid in self.rtt else None,
                          "control_msgs": self.ctl_msgs.get(mid, 0)})
        return {"name": ov.me["cluster"], "node_id": ov.id, "root": ov.is_root(), "parent": ov.parent,
                "children": sorted(ov.children), "depth": ov.depth(), "moves": ov.moves,
                "members": members, "links": links,
                "lost": [{"id": x["id"], "name": x["name"], "ago_s": round(now - x["at"], 1), "why": x["why"]}
                         for x in ov.lost],
                "interest_entries": self.interest.total_keys(),
                "interest": {"local": _entries(self.interest.local), "local_count": len(self.interest.local),
                             "links": {mid: _entries(t) for mid, t in self.interest.links.items()},
                             "link_counts": {mid: len(t) for mid, t in self.interest.links.items()}},
                "discovery": bool(self.udp), "control_port": self.ctl_port, "bad_frames": self.bad_frames,
                "address": address, "address_source": source}



def _host_of(endpoint: str) -> str:
    return endpoint.removeprefix("tcp://").rsplit(":", 1)[0]


def _local_ipv4() -> set[str]:
    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET}


def _entries(table: dict, limit: int = 100) -> list:
    """A sample of at most `limit` [pattern, group, count] rows for status, in table order.

    Status is built every second: it must never sort or walk the whole table, which
    holds one entry per subscribed (pattern, group) (issue 10: 100,000 idle
    subscriptions cost 17 % of a core when this sorted them)."""
    return [[p, g, n] for (p, g), n in itertools.islice(table.items(), limit)]
