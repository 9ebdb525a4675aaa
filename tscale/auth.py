"""Authentication at the ZeroMQ handshake (ZAP) and per-user permissions (sans-I/O).

ZeroMQ asks a ZAP handler (RFC 27) about every connection to a socket that runs
PLAIN or CURVE, before a single message of that connection reaches the
application.  Each tscale process that has a server socket (every worker for
its client port, the supervisor for its control port) answers those requests
with `Gate.decide`, from a socket in its own poll loop (`zap_reply` does the
framing).  A connection that fails never reaches a handler; one that passes
carries its user id in every message (frame property "User-Id").

User ids: a name from the users file, `TOKEN_USER` for the shared token,
`PEER_USER` for another node of the cluster, "" for an anonymous client of a
node that asks no credentials (CURVE encryption only).

Permissions follow NATS: publish and subscribe each have allow and deny lists
of patterns, deny wins; `allow_responses` lets a user publish to reply names
(`_INBOX.` and below), so that it can answer requests without any other
publish right.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
import tomllib

from zmq.utils import z85

from .keys import cluster_peer_pair, peer_password, token_client_pair, valid_key
from .subjects import matches, name_error, pattern_error

TOKEN_USER = "$token"
PEER_USER = "$peer"
PLAIN_TOKEN_NAME = "token"      # PLAIN user name under which a client presents the token
PLAIN_PEER_NAME = "peer"        # PLAIN user name under which a node presents the derived peer password

CLIENT_DOMAIN = "tscale"
CONTROL_DOMAIN = "tscale-control"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
INBOX_PREFIX = "_INBOX."         # reply names: what allow_responses lets a user publish to
PASSWORD_CHECKS_PER_S = 10      # scrypt costs ~0.1 s: bound what a flood of bad passwords can take
_USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")


class UsersError(Exception):
    """A users file that cannot be used; the message says where and why."""


# ----------------------------------------------------------------------------- passwords
def hash_password(password: str) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{b64(salt).decode()}:{b64(h).decode()}"


def _parse_hash(text) -> tuple | None:
    try:
        kind, n, r, p, salt, h = text.split(":")
        if kind != "scrypt":
            return None
        return int(n), int(r), int(p), base64.b64decode(salt, validate=True), base64.b64decode(h, validate=True)
    except (ValueError, AttributeError, TypeError):
        return None


def check_password(stored: str, password: str) -> bool:
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    n, r, p, salt, h = parsed
    try:
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(h))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, h)


# ----------------------------------------------------------------------------- patterns
def covers(allow: str, pattern: str) -> bool:
    """True if every name `pattern` matches is matched by `allow`."""
    a, p = allow.split("."), pattern.split(".")
    for i, tok in enumerate(a):
        if tok == ">":
            return len(p) > i
        if i >= len(p) or p[i] == ">":
            return False
        if tok != "*" and (p[i] == "*" or p[i] != tok):
            return False
    return len(a) == len(p)


def overlaps(x: str, y: str) -> bool:
    """True if some name matches both patterns."""
    a, b = x.split("."), y.split(".")
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            return False
        if a[i] == ">" or b[i] == ">":
            return True
        if a[i] != "*" and b[i] != "*" and a[i] != b[i]:
            return False
    return True


class Perms:
    """One user's permissions.  None for a list means "everything"."""

    __slots__ = ("pub_allow", "pub_deny", "sub_allow", "sub_deny", "responses")

    def __init__(self, pub_allow=None, pub_deny=(), sub_allow=None, sub_deny=(), responses=False):
        self.pub_allow = pub_allow
        self.pub_deny = tuple(pub_deny)
        self.sub_allow = sub_allow
        self.sub_deny = tuple(sub_deny)
        self.responses = responses

    def may_publish(self, name: str) -> bool:
        if any(matches(d, name) for d in self.pub_deny):
            return False
        if self.responses and name.startswith(INBOX_PREFIX):
            return True
        return self.pub_allow is None or any(matches(a, name) for a in self.pub_allow)

    def may_subscribe(self, pattern: str) -> bool:
        """Allowed if an allow pattern covers the whole pattern and no deny pattern
        overlaps it (a subscription that could see a denied name is refused: deny wins)."""
        if any(overlaps(d, pattern) for d in self.sub_deny):
            return False
        return self.sub_allow is None or any(covers(a, pattern) for a in self.sub_allow)

    @property
    def unrestricted_publish(self) -> bool:
        return self.pub_allow is None and not self.pub_deny


class User:
    __slots__ = ("name", "key", "password", "perms")

    def __init__(self, name: str, key: str | None, password: str | None, perms: Perms | None):
        self.name = name
        self.key = key
        self.password = password
        self.perms = perms


# ----------------------------------------------------------------------------- users file
_USER_KEYS = {"key", "password", "publish", "subscribe", "allow_responses"}
_LIST_KEYS = {"allow", "deny"}


def _patterns(where: str, value, check) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsersError(f"{where}: expected a list of patterns")
    for v in value:
        e = check(v)
        if e is not None:
            raise UsersError(f"{where}: {e}")
    return list(value)


def parse_users(doc: dict, source: str = "users file") -> dict[str, User]:
    """Validate a parsed users TOML document into {name: User}."""
    if set(doc) - {"users"}:
        raise UsersError(f"{source}: unknown top-level key(s) {sorted(set(doc) - {'users'})}; use [users.NAME]")
    users = {}
    keys_seen = {}
    for name, u in (doc.get("users") or {}).items():
        where = f"{source}: users.{name}"
        if not _USER_NAME.match(name) or name in (PLAIN_TOKEN_NAME, PLAIN_PEER_NAME):
            raise UsersError(f"{where}: a user name is 1..64 of A-Z a-z 0-9 _ . @ - and not 'token' or 'peer'")
        if not isinstance(u, dict) or set(u) - _USER_KEYS:
            raise UsersError(f"{where}: unknown key(s) {sorted(set(u) - _USER_KEYS) if isinstance(u, dict) else u}")
        key, password = u.get("key"), u.get("password")
        if key is None and password is None:
            raise UsersError(f"{where}: needs key (a CURVE public key) or password (a hash from tscale keys --hash-password)")
        if key is not None:
            if not valid_key(key):
                raise UsersError(f"{where}: key must be a 40-character Z85 CURVE public key")
            if key in keys_seen:
                raise UsersError(f"{where}: key already belongs to user {keys_seen[key]}")
            keys_seen[key] = name
        if password is not None and _parse_hash(password) is None:
            raise UsersError(f"{where}: password must be a hash from `tscale keys --hash-password`, never clear text")
        lists = {}
        for part, check in (("publish", name_error), ("subscribe", pattern_error)):
            sect = u.get(part)
            if sect is None:
                continue
            if not isinstance(sect, dict) or set(sect) - _LIST_KEYS:
                raise UsersError(f"{where}.{part}: use allow = [...] and/or deny = [...]")
            # Publish lists hold patterns too (orders.> allows publishing under orders.).
            for k in ("allow", "deny"):
                if k in sect:
                    lists[(part, k)] = _patterns(f"{where}.{part}.{k}", sect[k], pattern_error)
        responses = u.get("allow_responses", False)
        if not isinstance(responses, bool):
            raise UsersError(f"{where}: allow_responses must be true or false")
        perms = None
        if lists or responses:
            perms = Perms(lists.get(("publish", "allow")), lists.get(("publish", "deny"), ()),
                          lists.get(("subscribe", "allow")), lists.get(("subscribe", "deny"), ()), responses)
        users[name] = User(name, key, password, perms)
    return users


def load_users(path: str) -> dict:
    """Read and validate a users file; returns the parsed TOML document (it travels to
    the workers as is and each process parses it with `parse_users`)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsersError(f"users file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsersError(f"users file {path}: {exc}") from None
    parse_users(doc, f"users file {path}")
    return doc


# ----------------------------------------------------------------------------- the gate
class Gate:
    """Decides ZAP requests for one process, from the node's security settings.

    `mechanism` is what the client ports run ("null", "plain" or "curve");
    `token`, `cluster_secret` and `users` say who may pass."""

    def __init__(self, mechanism: str, token: str = "", cluster_secret: str = "", users_doc: dict | None = None,
                 clock=time.monotonic):
        self.mechanism = mechanism
        self.token = token
        self.cluster_secret = cluster_secret
        self.peer_key = cluster_peer_pair(cluster_secret)[0] if cluster_secret else None
        self.peer_password = peer_password(cluster_secret) if cluster_secret else None
        self.token_key = token_client_pair(token)[0] if token else None
        self.clock = clock
        self._verified: dict[str, bytes] = {}    # user -> keyed digest of the last password that passed scrypt
        self._mac_key = os.urandom(32)
        self._budget_at = 0.0
        self._budget = PASSWORD_CHECKS_PER_S
        self.set_users(users_doc)

    def set_users(self, users_doc: dict | None) -> None:
        self.users = parse_users(users_doc) if users_doc is not None else None
        self.by_key = {u.key: u for u in self.users.values() if u.key} if self.users else {}
        self._verified.clear()

    @property
    def open(self) -> bool:
        """No credential asked of clients: anyone who completes the handshake is served."""
        return not self.token and self.users is None

    def perms(self, user: str) -> Perms | None:
        if self.users is None:
            return None
        u = self.users.get(user)
        return u.perms if u is not None else None

    def known(self, user: str) -> bool:
        """Whether a user id that passed the handshake earlier is still allowed (after a reload)."""
        if user in (PEER_USER, TOKEN_USER):
            return True
        if not user:
            return self.open
        return self.users is not None and user in self.users

    def decide(self, domain: str, mechanism: str, creds: list[bytes]) -> tuple[str, str, str]:
        """(status code, text, user id) for one ZAP request."""
        if domain == CONTROL_DOMAIN:
            if mechanism == "CURVE" and self.peer_key and creds and z85.encode(creds[0]).decode() == self.peer_key:
                return "200", "OK", PEER_USER
            return "400", "not a node of this cluster", ""
        if mechanism == "CURVE" and self.mechanism == "curve" and creds:
            key = z85.encode(creds[0]).decode()
            if key == self.peer_key:
                return "200", "OK", PEER_USER
            if key == self.token_key:
                return "200", "OK", TOKEN_USER
            u = self.by_key.get(key)
            if u is not None:
                return "200", "OK", u.name
            if self.open:
                return "200", "OK", ""
            return "400", "unknown client key", ""
        if mechanism == "PLAIN" and self.mechanism == "plain" and len(creds) == 2:
            user, password = creds[0].decode(errors="replace"), creds[1].decode(errors="replace")
            if user == PLAIN_TOKEN_NAME and self.token:
                ok = hmac.compare_digest(password.encode(), self.token.encode())
                return ("200", "OK", TOKEN_USER) if ok else ("400", "wrong token", "")
            if user == PLAIN_PEER_NAME and self.peer_password:
                ok = hmac.compare_digest(password.encode(), self.peer_password.encode())
                return ("200", "OK", PEER_USER) if ok else ("400", "wrong peer password", "")
            return self._check_user(user, password)
        if mechanism == "NULL" and self.mechanism == "null":
            return "200", "OK", ""
        return "400", f"mechanism {mechanism} not accepted here", ""

    def _check_user(self, name: str, password: str) -> tuple[str, str, str]:
        u = self.users.get(name) if self.users else None
        if u is None or u.password is None:
            return "400", "unknown user or wrong password", ""
        digest = hmac.new(self._mac_key, password.encode(), hashlib.sha256).digest()
        if hmac.compare_digest(self._verified.get(name, b""), digest):
            return "200", "OK", name
        now = self.clock()
        if now - self._budget_at >= 1.0:
            self._budget_at, self._budget = now, PASSWORD_CHECKS_PER_S
        if self._budget <= 0:
            return "300", "too many password checks; try again", ""
        self._budget -= 1
        if check_password(u.password, password):
            self._verified[name] = digest
            return "200", "OK", name
        return "400", "unknown user or wrong password", ""


def zap_reply(frames: list[bytes], gate: Gate) -> list[bytes] | None:
    """The reply to one ZAP request as received on a ROUTER (routing id first), or None
    if it is not a ZAP request at all."""
    if len(frames) < 8 or frames[1] != b"":
        return None
    ident, _, version, request_id, domain, _address, _identity, mechanism = frames[:8]
    if version != b"1.0":
        status, text, user = "500", "unsupported ZAP version", ""
    else:
        status, text, user = gate.decide(domain.decode(errors="replace"), mechanism.decode(errors="replace"),
                                         frames[8:])
    return [ident, b"", b"1.0", request_id, status.encode(), text.encode(), user.encode(), b""]
