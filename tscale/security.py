"""Which security mechanism each socket of a node runs, and the socket options for it.

One `Security` object, built from the node specification in every process, is
the single place that decides:

* client ports (every worker's ROUTER): CURVE with `--curve` (or a cluster key),
  else PLAIN if the node asks credentials (`--token`, a users file), else NULL;
* peer links (a worker's DEALER to a neighbour's worker): whatever the
  neighbour's client ports run, presenting the credential derived from the
  cluster secret (never the secret itself);
* the control port (the supervisor's ROUTER) and the supervisor's DEALERs to
  other control ports: CURVE with the key pair derived from the cluster secret
  when there is one (cluster key, else the token), else NULL (open cluster).

Server sockets that run PLAIN or CURVE get a ZAP domain; the process must have
bound its ZAP handler (auth.ZAP_ENDPOINT) before it binds them, or libzmq would
accept every client.
"""
from __future__ import annotations

import zmq

from . import keys
from .auth import CLIENT_DOMAIN, CONTROL_DOMAIN, PLAIN_PEER_NAME, ZAP_ENDPOINT, Gate, zap_reply


def zap_socket(ctx: zmq.Context) -> zmq.Socket:
    """This process's ZAP handler socket; bind it before any PLAIN/CURVE server socket."""
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(ZAP_ENDPOINT)
    return s


def answer_zap(sock: zmq.Socket, gate: Gate, refused, budget: int = 64) -> None:
    """Answer the ZAP requests waiting on `sock`; `refused(address, reason)` is told of each refusal."""
    for _ in range(budget):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        reply = zap_reply(frames, gate)
        if reply is not None:
            if reply[4] != b"200":
                refused(frames[5].decode(errors="replace"), reply[5].decode())
            sock.send_multipart(reply)


class Security:
    def __init__(self, curve: bool = False, token: str = "", cluster_key: str = "", server_public: str = "",
                 server_secret: str = "", users: dict | None = None, users_file: str = ""):
        self.token = token or ""
        self.cluster_secret = cluster_key or self.token       # the token doubles as the cluster secret
        self.keyed_cluster = bool(cluster_key)
        self.curve = bool(curve or cluster_key)
        self.users_doc = users
        self.users_file = users_file
        if self.curve:
            self.mechanism = "curve"
        elif self.token or users is not None:
            self.mechanism = "plain"
        else:
            self.mechanism = "null"
        if self.curve and self.cluster_secret and not server_public:
            server_public, server_secret = keys.cluster_server_pair(self.cluster_secret)
        self.server_public, self.server_secret = server_public, server_secret
        self.control = "curve" if self.cluster_secret else "null"
        if self.cluster_secret:
            self.ctl_public, self.ctl_secret = keys.cluster_server_pair(self.cluster_secret)
            self.peer_public, self.peer_secret = keys.cluster_peer_pair(self.cluster_secret)

    @classmethod
    def from_spec(cls, spec: dict) -> "Security":
        return cls(**(spec.get("security") or {}))

    def spec(self) -> dict:
        """What the supervisor hands its workers (through the environment, never argv)."""
        return {"curve": self.curve, "token": self.token,
                "cluster_key": self.cluster_secret if self.keyed_cluster else "",
                "server_public": self.server_public, "server_secret": self.server_secret,
                "users": self.users_doc, "users_file": self.users_file}

    @property
    def needs_zap(self) -> bool:
        return self.mechanism != "null" or self.control != "null"

    def gate(self) -> Gate:
        return Gate(self.mechanism, self.token, self.cluster_secret, self.users_doc)

    # -- server sockets (before bind) --------------------------------------------------
    def serve_clients(self, sock: zmq.Socket) -> None:
        if self.mechanism == "curve":
            sock.curve_secretkey = self.server_secret.encode()
            sock.curve_publickey = self.server_public.encode()
            sock.curve_server = True
        elif self.mechanism == "plain":
            sock.plain_server = True
        if self.mechanism != "null":
            sock.zap_domain = CLIENT_DOMAIN.encode()

    def serve_control(self, sock: zmq.Socket) -> None:
        if self.control == "curve":
            sock.curve_secretkey = self.ctl_secret.encode()
            sock.curve_publickey = self.ctl_public.encode()
            sock.curve_server = True
            sock.zap_domain = CONTROL_DOMAIN.encode()

    # -- client sockets (before connect) ----------------------------------------------
    def peer_client(self, sock: zmq.Socket, server_key: str | None) -> None:
        """A DEALER to another node's worker port (peer link, seed lookup)."""
        if self.mechanism == "curve":
            if self.cluster_secret:
                pub, sec = self.peer_public, self.peer_secret
            else:   # open cluster with CURVE: encrypted, not authenticated (any node may join)
                pub, sec = keys.new_client_pair()
            sock.curve_secretkey = sec.encode()
            sock.curve_publickey = pub.encode()
            sock.curve_serverkey = (server_key or self.server_public).encode()
        elif self.mechanism == "plain":
            # Without a cluster secret there is no credential a node could present: such a
            # node (users file only) links with nobody, and says so at start.
            sock.plain_username = PLAIN_PEER_NAME.encode()
            sock.plain_password = keys.peer_password(self.cluster_secret).encode() if self.cluster_secret else b""

    def control_client(self, sock: zmq.Socket) -> None:
        """A DEALER to another node's control port."""
        if self.control == "curve":
            sock.curve_secretkey = self.peer_secret.encode()
            sock.curve_publickey = self.peer_public.encode()
            sock.curve_serverkey = self.ctl_public.encode()

    # -- status ------------------------------------------------------------------------
    def describe(self) -> dict:
        """The mode of each port, for `tscale status` (no secret, no key but public ones)."""
        asked = [w for w, on in (("token", self.token), ("users", self.users_doc is not None)) if on]
        if asked:
            who = " or ".join(asked)
        else:
            who = "anyone (encryption only)" if self.mechanism == "curve" else "anyone"
        return {"clients": self.mechanism, "clients_auth": who,
                "peers": self.mechanism,
                "peers_auth": "cluster secret" if self.cluster_secret else "none (open cluster)",
                "control": self.control,
                "cluster_secret": "cluster key" if self.keyed_cluster else ("token" if self.token else "none"),
                "server_key": self.server_public or None,
                "users_file": self.users_file or None}
