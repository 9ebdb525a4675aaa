"""Node configuration: defaults < TOML file < TSCALE_* environment < flags.

Everything has a default, so `tscale up` needs no configuration at all.
"""
from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .address import DEFAULT_PORT, split_hostport
from .errors import AddressError

DEFAULT_CLIENT_MAX_PENDING = 4 * 1024 * 1024   # bytes queued per client connection before events are dropped
DEFAULT_SLOW_CONSUMER_GRACE_MS = 5000          # over its bound this long: the connection is disconnected


class ConfigError(Exception):
    """A configuration value that cannot be used; the message says which and why."""


@dataclass
class NodeConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    workers: int = 0                 # 0 = one per CPU
    name: str = ""                   # "" = hostname
    data_dir: str = ""               # "" = ~/.local/share/tscale (or $XDG_DATA_HOME/tscale)
    log_level: str = "info"
    log_format: str = "text"
    max_payload: int = 1024 * 1024
    token: str = ""                  # "" = no authentication
    client_hwm: int = 1000           # event frames queued per client before drops are counted
    client_max_pending: int = DEFAULT_CLIENT_MAX_PENDING   # bytes queued per client before drops are counted
    slow_consumer_grace_ms: int = DEFAULT_SLOW_CONSUMER_GRACE_MS   # then ERR slow_consumer, subscriptions gone
    max_subs_per_conn: int = 100_000
    cluster: str = "tscale"          # nodes only join others with the same cluster name
    join: str = ""                   # comma-separated HOST:PORT seeds
    no_discovery: int = 0            # 1 = no UDP beacons
    discovery_port: int = 7401
    advertise: str = ""              # HOST:PORT others should use to reach us (NAT)
    max_children: int = 8            # overlay fan-out bound
    monitor: str = ""                # HOST:PORT of the HTTP monitor (/metrics, /healthz, /status); "" = off
    # -- security (docs/SECURITY.md) --
    curve: int = 0                   # 1 = CURVE on every TCP socket (node key pair in data_dir)
    cluster_key: str = ""            # shared secret of the cluster (implies curve); prefer cluster_key_file
    cluster_key_file: str = ""       # file holding the cluster key (mode 0600)
    users_file: str = ""             # TOML users file: keys/passwords and permissions (reloaded on SIGHUP)

    def resolved(self) -> "NodeConfig":
        """Fill in the computed defaults and validate."""
        import psutil

        c = NodeConfig(**asdict(self))
        if c.workers < 0:
            raise ConfigError(f"workers {c.workers}: use 1..256, or 0 for one per CPU")
        if c.workers == 0:
            c.workers = psutil.cpu_count(logical=True) or 1
        if not c.name:
            c.name = socket.gethostname()
        if not c.data_dir:
            base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
            c.data_dir = os.path.join(base, "tscale")
        _, port = parse_hostport(c.listen)
        if not 1 <= c.discovery_port <= 65535:
            raise ConfigError(f"discovery_port {c.discovery_port}: use 1..65535")
        if c.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log level {c.log_level!r}: use debug, info, warning or error")
        if c.log_format not in ("text", "json"):
            raise ConfigError(f"log format {c.log_format!r}: use text or json")
        if not 1 <= c.max_payload <= 64 * 1024 * 1024:
            raise ConfigError("max_payload must be between 1 byte and 64 MiB")
        for seed in c.join_list():
            parse_hostport(seed)
        if c.advertise:
            parse_hostport(c.advertise)
        if c.monitor:
            c.monitor_address()
        if not c.cluster or not c.cluster.isprintable() or len(c.cluster) > 64:
            raise ConfigError(f"cluster name {c.cluster!r}: 1..64 printable characters")
        if c.client_hwm < 1:
            raise ConfigError("client_hwm must be at least 1 (frames queued per client)")
        if not 64 * 1024 <= c.client_max_pending <= 1 << 30:
            raise ConfigError("client_max_pending must be between 65536 bytes (64 KiB) and 1073741824 (1 GiB)")
        if not 0 <= c.slow_consumer_grace_ms <= 3_600_000:
            raise ConfigError("slow_consumer_grace_ms must be between 0 and 3600000 (one hour)")
        if c.max_subs_per_conn < 1:
            raise ConfigError("max_subs_per_conn must be at least 1")
        if c.max_children < 1:
            raise ConfigError("max_children must be at least 1")
        if c.workers > 256:
            raise ConfigError("workers must be at most 256")
        if port + c.workers > 65535:
            raise ConfigError(f"listen port {port} with {c.workers} workers needs TCP ports {port}..{port + c.workers} "
                              f"(one per worker, then the cluster control port): beyond 65535")
        _resolve_security(c)
        return c

    def monitor_address(self) -> tuple[str, int]:
        """HOST:PORT of `monitor`; a missing host means 127.0.0.1 (not every interface)."""
        if ":" not in self.monitor:
            raise ConfigError(f"monitor {self.monitor!r}: expected HOST:PORT or :PORT")
        try:
            return split_hostport(self.monitor, "127.0.0.1")
        except AddressError as exc:
            raise ConfigError(f"monitor: {exc}") from None

    def discovery_on(self) -> bool:
        """UDP beacons run unless turned off or the node listens on a loopback address."""
        host = parse_hostport(self.listen)[0]
        return not self.no_discovery and not (host.startswith("127.") or host in ("localhost", "::1"))


    def join_list(self) -> list[str]:
        return [s.strip() for s in self.join.split(",") if s.strip()]


def _resolve_security(c: "NodeConfig") -> None:
    """Read the cluster key file and check the users file, so that `tscale up` fails at once."""
    from .auth import UsersError, load_users
    from .keys import KeyFileError, read_secret_file
    if c.cluster_key_file:
        if c.cluster_key:
            raise ConfigError("give the cluster key or a cluster key file, not both")
        try:
            c.cluster_key = read_secret_file(c.cluster_key_file)
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from None
        c.cluster_key_file = ""   # read once; the key itself travels on (never in argv)
    if c.cluster_key and len(c.cluster_key) < 16:
        raise ConfigError("cluster key: use at least 16 characters (e.g. `tscale keys --new-secret`)")
    if c.users_file:
        try:
            load_users(c.users_file)
        except UsersError as exc:
            raise ConfigError(str(exc)) from None
    if c.curve and c.join_list() and not (c.cluster_key or c.token):
        raise ConfigError("--curve with --join needs a cluster secret (--cluster-key or --token): "
                          "a seed's encrypted port can only be reached with the key the secret gives")


def parse_hostport(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', 'host' or ':port' -> (host, port); a missing host means all interfaces."""
    try:
        return split_hostport(value, "0.0.0.0", default_port)
    except AddressError as exc:
        raise ConfigError(str(exc)) from None


_TYPES = {f.name: f.type for f in fields(NodeConfig)}


BOOL_OPTIONS = frozenset({"no_discovery", "curve"})
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "")


def _coerce(key: str, value, strict: bool = False):
    """One option value from TOML, the environment or a flag, checked strictly:
    `workers = 2.5` or `workers = true` is an error, not 2 or 1.  With `strict` (a TOML file, which
    has types) the value must also have the option's type: `workers = "1"` is an error."""
    typ = _TYPES[key]
    if strict:
        _check_toml_type(key, value, typ)
    if isinstance(value, list):
        value = ",".join(map(str, value))
    if key in BOOL_OPTIONS:
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return int(value.lower() in _TRUE)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ not in (int, "int"):
        return str(value)
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None


def _check_toml_type(key: str, value, typ) -> None:
    if key in BOOL_OPTIONS:
        ok = isinstance(value, bool) or (type(value) is int and value in (0, 1))
        want = "true or false"
    elif key == "join":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        want = "a string or an array of strings"
    elif typ in (int, "int"):
        ok, want = type(value) is int, "a whole number (no quotes)"
    else:
        ok, want = isinstance(value, str), "a string (in quotes)"
    if not ok:
        raise ConfigError(f"{key}: expected {want}, got {value!r}")


def load(flags: dict, environ=os.environ) -> NodeConfig:
    """Merge the sources; `flags` holds CLI values (None = not given)."""
    values: dict = {}
    path = flags.get("config") or environ.get("TSCALE_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for k, v in data.items():
            key = k.replace("-", "_")
            if key not in _TYPES:
                raise ConfigError(f"config file {path}: unknown option {k!r}")
            values[key] = _coerce(key, v, strict=True)
    for key in _TYPES:
        env = environ.get("TSCALE_" + key.upper())
        if env is not None and env != "":
            values[key] = _coerce(key, env)
    for key, v in flags.items():
        if key in _TYPES and v is not None:
            values[key] = _coerce(key, v)
    return NodeConfig(**values).resolved()
