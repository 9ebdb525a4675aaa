"""CURVE key pairs: the node's long-term pair in data_dir, client pairs, and pairs
derived from a shared secret (the cluster key or the token).

All cryptography is ZeroMQ's (libsodium behind `zmq.curve_keypair` and
`zmq.curve_public`); this module only stores keys and derives a 32-byte CURVE
secret key with HMAC-SHA256 (stdlib) from a shared secret, so that every holder
of the secret computes the same key pair and nobody has to ship key files.

Keys are Z85 text (40 characters), as every ZeroMQ binding takes them.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
import tomllib

import zmq
from zmq.utils import z85

NODE_KEY_FILE = "node_key"          # in data_dir: the node's CURVE key pair (secret inside: mode 0600)

# Labels of the derivations (changing one changes every derived key).
_LABEL_SERVER = b"tscale cluster server curve v1"    # control ports; client ports of a keyed cluster
_LABEL_PEER = b"tscale cluster peer curve v1"        # what a node presents as a client to other nodes
_LABEL_PEER_PASSWORD = b"tscale cluster peer plain v1"
_LABEL_TOKEN_CLIENT = b"tscale token client curve v1"
_LABEL_BEACON = b"tscale beacon mac v1"


class KeyFileError(Exception):
    """A key file that cannot be used; the message says which and why."""


def derive_secret(secret: str, label: bytes) -> str:
    """A Z85 CURVE secret key computed from a shared secret (HMAC-SHA256, 32 bytes)."""
    return z85.encode(hmac.new(secret.encode(), label, hashlib.sha256).digest()).decode()


def pair_from_secret(z85_secret: str) -> tuple[str, str]:
    """(public, secret) for a Z85 secret key."""
    return zmq.curve_public(z85_secret.encode()).decode(), z85_secret


def cluster_server_pair(secret: str) -> tuple[str, str]:
    return pair_from_secret(derive_secret(secret, _LABEL_SERVER))


def cluster_peer_pair(secret: str) -> tuple[str, str]:
    return pair_from_secret(derive_secret(secret, _LABEL_PEER))


def token_client_pair(token: str) -> tuple[str, str]:
    """The client key pair every holder of the token uses on a CURVE node."""
    return pair_from_secret(derive_secret(token, _LABEL_TOKEN_CLIENT))


def peer_password(secret: str) -> str:
    """The PLAIN password nodes of a token cluster present on each other's client ports
    (derived: the token itself never travels to a peer)."""
    return hmac.new(secret.encode(), _LABEL_PEER_PASSWORD, hashlib.sha256).hexdigest()


def beacon_mac(secret: str, body: bytes) -> bytes:
    return hmac.new(hmac.new(secret.encode(), _LABEL_BEACON, hashlib.sha256).digest(), body,
                    hashlib.sha256).digest()[:16]


def valid_key(text) -> bool:
    """True for a Z85 CURVE key (40 characters that decode to 32 bytes)."""
    if type(text) is not str or len(text) != 40:
        return False
    try:
        return len(z85.decode(text.encode())) == 32
    except (ValueError, KeyError, TypeError):
        return False


# ----------------------------------------------------------------------------- files
def write_pair(path: str, public: str, secret: str, comment: str) -> None:
    """Write a key pair file readable by its owner only (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# {comment}\n# CURVE key pair (Z85). Keep this file secret; share only the public key.\n"
                f'public_key = "{public}"\nsecret_key = "{secret}"\n')


def read_pair(path: str) -> tuple[str, str]:
    """(public, secret) from a key file; refuses one that group or others may read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                        f"run: chmod 600 {path}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        public, secret = doc["public_key"], doc["secret_key"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise KeyFileError(f"key file {path} is not a tscale key file: {exc}") from None
    if not (valid_key(public) and valid_key(secret)) or pair_from_secret(secret)[0] != public:
        raise KeyFileError(f"key file {path}: public_key and secret_key are not one CURVE key pair")
    return public, secret


def node_pair(data_dir: str, create: bool = True) -> tuple[str, str]:
    """The node's long-term key pair, created in data_dir on first use and reused after."""
    path = os.path.join(data_dir, NODE_KEY_FILE)
    if create and not os.path.exists(path):
        os.makedirs(data_dir, exist_ok=True)
        public, secret = (k.decode() for k in zmq.curve_keypair())
        try:
            write_pair(path, public, secret, "tscale node key")
        except FileExistsError:     # another process created it first: use that one
            pass
    return read_pair(path)


def new_client_pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def read_secret_file(path: str) -> str:
    """A shared secret kept in a file (the cluster key): refused if group/other readable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"secret file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"secret file {path} is readable by group or others; run: chmod 600 {path}")
    with open(path) as f:
        secret = f.read().strip()
    if not secret:
        raise KeyFileError(f"secret file {path} is empty")
    return secret
