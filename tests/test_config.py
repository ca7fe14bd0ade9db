"""
The config file: the original's sample loads as is, defaults match SPEC
section 4, and every bad value is one line naming file, section, key, value.
"""

import os

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from sharqd.config import Config
from sharqd.errors import ConfigError

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "original-sample.conf")
SHIPPED = os.path.join(HERE, "..", "etc", "sharq.conf")


def write(tmp_path, text):
    path = tmp_path / "sharq.conf"
    path.write_text(text)
    return str(path)


def error_of(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        Config.from_file(write(tmp_path, text))
    return str(info.value)


def test_original_sample_loads_verbatim():
    """When the original README's sample config is read byte for byte, every
    value (inline comments stripped) is taken."""
    config = Config.from_file(SAMPLE)
    assert config.sharq.job_expire_interval == 1000
    assert config.sharq.job_requeue_interval == 1000
    assert (config.server.host, config.server.port, config.server.workers) == (
        "127.0.0.1", 8080, 1)
    assert config.server.accesslog == "/var/log/sharq-server/sharq.log"
    assert config.redis.conn_type == "unix_sock"
    assert config.redis.unix_socket_path == "/tmp/redis.sock"
    assert (config.redis.db, config.redis.key_prefix, config.redis.port) == (
        0, "sharq_server", 6379)


def test_shipped_config_loads():
    """When sharqd's own etc/sharq.conf is read, it loads."""
    assert Config.from_file(SHIPPED).server.port == 8080


def test_hardened_example_config_loads():
    """When etc/sharq-hardened.conf is read, it loads with auth, TLS on two
    workers and every limit set."""
    config = Config.from_file(os.path.join(os.path.dirname(SHIPPED),
                                           "sharq-hardened.conf"))
    assert config.auth.enabled and config.auth.tokens_file == "/etc/sharqd/tokens"
    assert config.server.listen.startswith("ssl:") and config.server.workers == 2
    assert (config.server.idle_timeout, config.server.header_timeout,
            config.server.body_timeout, config.server.max_connections,
            config.server.max_waiters) == (60, 10, 30, 10000, 2000)


def test_limits_and_auth_defaults_and_errors(tmp_path):
    """When the limit keys are absent their defaults apply, [auth] is off,
    and an [auth] section without tokens_file stops startup."""
    server = Config.from_file(write(tmp_path, "")).server
    assert (server.idle_timeout, server.header_timeout, server.body_timeout,
            server.max_connections, server.max_waiters) == (60, 10, 30, 10000, 5000)
    assert not Config.from_file(write(tmp_path, "")).auth.enabled
    with pytest.raises(ConfigError) as raised:
        Config.from_file(write(tmp_path, "[auth]\nopen_routes : /\n"))
    assert "[auth] tokens_file = '': is required in [auth]" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        Config.from_file(write(tmp_path, "[sharq-server]\nheader_timeout : 0\n"))
    assert "[sharq-server] header_timeout = '0'" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        Config.from_file(write(tmp_path, "[sharq-server]\nbody_timeout : -1\n"))
    assert "[sharq-server] body_timeout = '-1'" in str(raised.value)


def test_defaults(tmp_path):
    """When sections and keys are absent, the SPEC's defaults apply."""
    config = Config.from_file(write(tmp_path, ""))
    assert config.sharq.job_expire_interval == 1000
    assert config.sharq.job_requeue_interval == 1000
    assert config.sharq.default_job_requeue_limit == -1
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.workers == 1
    assert config.server.accesslog == ""
    assert config.server.max_request_size == 1048576
    assert config.server.listen == ""
    assert config.redis.conn_type == "tcp_sock"
    assert (config.redis.host, config.redis.port, config.redis.db) == ("127.0.0.1", 6379, 0)
    assert config.redis.key_prefix == "sharq_server"
    assert config.redis.password == ""
    assert config.redis.timeout == 2.0
    assert config.server.prometheus_refresh == 10.0
    assert Config.from_file(write(tmp_path, "[sharq-server]\nprometheus_refresh : 0\n")
                            ).server.prometheus_refresh == 0


def test_both_delimiters_and_comments(tmp_path):
    """When keys use = or : and carry ; or # comments, the values are clean."""
    config = Config.from_file(write(tmp_path, (
        "[sharq-server]\nport = 9000 # the port\nhost : ::1 ; v6\n"
        "listen = unix:/tmp/s.sock\n[redis]\ntimeout = 0.5\npassword = s3cret\n")))
    assert (config.server.port, config.server.host) == (9000, "::1")
    assert config.server.listen == "unix:/tmp/s.sock"
    assert (config.redis.timeout, config.redis.password) == (0.5, "s3cret")


def test_missing_file_names_the_file(tmp_path):
    """When the file does not exist, the error names it and says why."""
    path = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError) as info:
        Config.from_file(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_not_ini_is_one_line(tmp_path):
    """When the file is not INI, the error is one line naming the file."""
    message = error_of(tmp_path, "port 8080\n[x\n")
    assert "\n" not in message and message.startswith(str(tmp_path / "sharq.conf"))


@pytest.mark.parametrize("section,key,value", [
    ("sharq", "job_expire_interval", "soon"),
    ("sharq", "job_expire_interval", "0"),
    ("sharq", "job_requeue_interval", "-5"),
    ("sharq", "default_job_requeue_limit", "-2"),
    ("sharq-server", "port", "http"),
    ("sharq-server", "port", "70000"),
    ("sharq-server", "workers", "0"),
    ("sharq-server", "max_request_size", "1.5"),
    ("sharq-server", "log_format", "xml"),
    ("sharq-server", "prometheus_refresh", "-1"),
    ("sharq-server", "prometheus_refresh", "often"),
    ("redis", "db", "one"),
    ("redis", "port", "0"),
    ("redis", "conn_type", "udp_sock"),
    ("redis", "clustered", "maybe"),
    ("redis", "startup_nodes", "10.0.0.1"),
    ("redis", "startup_nodes", "10.0.0.1:7000, b:port"),
    ("redis", "wait_replicas", "-1"),
    ("redis", "wait_timeout", "0"),
    ("redis", "timeout", "0"),
    ("redis", "key_prefix", "has space"),
])
def test_bad_value_names_file_section_key_value(tmp_path, section, key, value):
    """When a value is bad, the one-line error names file, section, key, value."""
    path = write(tmp_path, f"[{section}]\n{key} : {value}\n")
    with pytest.raises(ConfigError) as info:
        Config.from_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: [{section}] {key} = {value!r}: ")


def test_clustered_reads_startup_nodes(tmp_path):
    """When clustered is true, startup_nodes is a list of host:port seeds
    besides host and port, and wait_replicas/wait_timeout are read."""
    path = write(tmp_path, "[redis]\nclustered : true\nport : 7000\n"
                 "startup_nodes : 10.0.0.2:7001, [::1]:7002\n"
                 "wait_replicas : 1\nwait_timeout : 250\n")
    redis = Config.from_file(path).redis
    assert redis.clustered and redis.port == 7000
    assert redis.startup_nodes == (("10.0.0.2", 7001), ("::1", 7002))
    assert (redis.wait_replicas, redis.wait_timeout) == (1, 250)


@pytest.mark.parametrize("text, key", [
    ("clustered : true\ndb : 2\n", "[redis] db = '2'"),
    ("clustered : true\nconn_type : unix_sock\nunix_socket_path : /tmp/r.sock\n",
     "[redis] conn_type = 'unix_sock'"),
])
def test_clustered_refuses_db_and_unix_socket(tmp_path, text, key):
    """When clustered is true with a db other than 0 or a unix socket,
    startup is refused with one line naming the key."""
    message = error_of(tmp_path, "[redis]\n" + text)
    assert key in message and "\n" not in message


def test_unix_sock_needs_a_path(tmp_path):
    """When conn_type is unix_sock without unix_socket_path, startup is refused."""
    message = error_of(tmp_path, "[redis]\nconn_type : unix_sock\n")
    assert "[redis] unix_socket_path" in message and "required" in message


def test_unknown_keys_are_warned_about(tmp_path):
    """When a key or section is unknown, it is ignored with a warning."""
    seen = []

    def observer(event):
        if event.get("log_level") == LogLevel.warn:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        config = Config.from_file(write(tmp_path, "[sharq]\ncolour : blue\n[extra]\na = 1\n"))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert config.sharq.job_expire_interval == 1000
    assert {e.get("key") for e in seen} >= {"colour"}
    assert {e.get("section") for e in seen} >= {"extra"}
