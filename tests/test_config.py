"""Sans-I/O: node configuration. Defaults < TOML file < TSCALE_* environment < flags."""
from __future__ import annotations

import os
import socket

import psutil
import pytest

from tscale.config import DEFAULT_PORT, ConfigError, NodeConfig, load, parse_hostport


def test_defaults_need_no_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    c = load({}, environ={})
    assert c.listen == f"0.0.0.0:{DEFAULT_PORT}" == "0.0.0.0:7400"
    assert c.workers == (psutil.cpu_count(logical=True) or 1)
    assert c.name == socket.gethostname()
    assert c.data_dir == os.path.join(str(tmp_path), "tscale")
    assert c.log_level == "info"
    assert c.log_format == "text"
    assert c.max_payload == 1024 * 1024
    assert c.token == ""


def test_default_data_dir_without_xdg(monkeypatch):
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    c = load({}, environ={})
    assert c.data_dir == os.path.join(os.path.expanduser("~"), ".local", "share", "tscale")


def test_environment_sets_options():
    env = {"TSCALE_WORKERS": "3", "TSCALE_LISTEN": "127.0.0.1:9000", "TSCALE_NAME": "envnode",
           "TSCALE_MAX_PAYLOAD": "2048", "TSCALE_LOG_LEVEL": "debug", "TSCALE_LOG_FORMAT": "json",
           "TSCALE_TOKEN": "s3cret", "TSCALE_DATA_DIR": "/tmp/x"}
    c = load({}, environ=env)
    assert (c.workers, c.listen, c.name, c.max_payload, c.log_level, c.log_format, c.token, c.data_dir) == \
        (3, "127.0.0.1:9000", "envnode", 2048, "debug", "json", "s3cret", "/tmp/x")


def test_empty_environment_value_is_ignored():
    c = load({}, environ={"TSCALE_WORKERS": "", "TSCALE_NAME": ""})
    assert c.workers == (psutil.cpu_count(logical=True) or 1)


def write(tmp_path, text: str):
    p = tmp_path / "tscale.toml"
    p.write_text(text)
    return str(p)


def test_toml_file_sets_options(tmp_path):
    path = write(tmp_path, 'listen = "127.0.0.1:7777"\nworkers = 2\nname = "filenode"\nlog-level = "warning"\n'
                           'max_payload = 4096\n')
    c = load({"config": path}, environ={})
    assert (c.listen, c.workers, c.name, c.log_level, c.max_payload) == ("127.0.0.1:7777", 2, "filenode",
                                                                         "warning", 4096)


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "workers = 5\n")
    assert load({}, environ={"TSCALE_CONFIG": path}).workers == 5


def test_precedence_file_then_env_then_flags(tmp_path):
    path = write(tmp_path, 'workers = 2\nname = "file"\nlisten = "127.0.0.1:1000"\n')
    env = {"TSCALE_WORKERS": "3", "TSCALE_NAME": "env"}
    c = load({"config": path}, environ=env)
    assert (c.workers, c.name, c.listen) == (3, "env", "127.0.0.1:1000")
    c = load({"config": path, "workers": 4, "name": None}, environ=env)
    assert (c.workers, c.name) == (4, "env")            # flags win; a flag that is None was not given


@pytest.mark.parametrize("flags,env", [
    ({"workers": "many"}, {}),
    ({}, {"TSCALE_WORKERS": "abc"}),
    ({}, {"TSCALE_MAX_PAYLOAD": "1MiB"}),
    ({"max_payload": 0}, {}),
    ({"max_payload": 64 * 1024 * 1024 + 1}, {}),
    ({"log_level": "loud"}, {}),
    ({"log_format": "xml"}, {}),
    ({"listen": "127.0.0.1:0"}, {}),
    ({"listen": "127.0.0.1:70000"}, {}),
    ({"listen": "127.0.0.1:http"}, {}),
    ({"workers": 1000}, {}),
    ({}, {"TSCALE_CLIENT_MAX_PENDING": "1024"}),
    ({}, {"TSCALE_CLIENT_MAX_PENDING": str((1 << 30) + 1)}),
    ({}, {"TSCALE_SLOW_CONSUMER_GRACE_MS": "-1"}),
    ({}, {"TSCALE_SLOW_CONSUMER_GRACE_MS": "2.5"}),
])
def test_bad_values_raise_config_error(flags, env):
    with pytest.raises(ConfigError) as ei:
        load(flags, environ=env)
    assert str(ei.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load({"config": str(tmp_path / "nope.toml")}, environ={})


def test_bad_toml_syntax(tmp_path):
    with pytest.raises(ConfigError):
        load({"config": write(tmp_path, "workers = = 2\n")}, environ={})


def test_unknown_toml_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        load({"config": write(tmp_path, "wrokers = 2\n")}, environ={})


def test_wrong_type_in_toml(tmp_path):
    with pytest.raises(ConfigError):
        load({"config": write(tmp_path, 'workers = "two"\n')}, environ={})


@pytest.mark.parametrize("value", ["2.5", "true"])
def test_non_integer_toml_number_is_rejected(tmp_path, value):
    with pytest.raises(ConfigError):
        load({"config": write(tmp_path, f"workers = {value}\n")}, environ={})


@pytest.mark.parametrize("value,expected", [("h:1", ("h", 1)), ("h", ("h", DEFAULT_PORT)), (":5", ("0.0.0.0", 5)),
                                            ("[::1]:8", ("::1", 8))])
def test_parse_hostport(value, expected):
    assert parse_hostport(value) == expected


def test_resolved_keeps_explicit_values():
    c = NodeConfig(workers=2, name="n", data_dir="/d").resolved()
    assert (c.workers, c.name, c.data_dir) == (2, "n", "/d")


def test_slow_consumer_options():
    c = load({}, environ={})
    assert (c.client_max_pending, c.slow_consumer_grace_ms) == (4 * 1024 * 1024, 5000)
    c = load({}, environ={"TSCALE_CLIENT_MAX_PENDING": "65536", "TSCALE_SLOW_CONSUMER_GRACE_MS": "0"})
    assert (c.client_max_pending, c.slow_consumer_grace_ms) == (65536, 0)


@pytest.mark.parametrize("text", ['workers = "1"', "name = 5", 'no_discovery = "yes"', "listen = 7400",
                                  "join = [1, 2]", 'max_payload = "1024"', "no_discovery = 2"])
def test_toml_values_must_have_the_option_type(tmp_path, text):
    with pytest.raises(ConfigError):
        load({"config": write(tmp_path, text + "\n")}, environ={})


def test_toml_typed_values_accepted(tmp_path):
    c = load({"config": write(tmp_path, 'join = ["a:1", "b:2"]\nno_discovery = true\nworkers = 2\n')}, environ={})
    assert (c.join, c.no_discovery, c.workers) == ("a:1,b:2", 1, 2)


@pytest.mark.parametrize("flags", [{"workers": -1}, {"listen": "127.0.0.1:65535", "workers": 1},
                                   {"discovery_port": 0}, {"monitor": "7000"}, {"monitor": "h:x"}])
def test_values_checked_before_start(flags):
    with pytest.raises(ConfigError):
        load(flags, environ={})


def test_highest_port_block_that_fits():
    c = load({"listen": "127.0.0.1:65533", "workers": 2}, environ={})
    assert c.workers == 2          # 65533, 65534 for workers, 65535 for the control port


def test_monitor_address_defaults_to_loopback():
    assert load({"monitor": ":9100"}, environ={}).monitor_address() == ("127.0.0.1", 9100)
