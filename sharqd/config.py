"""
The INI config file of the original SharQ Server, read into one frozen object.

Every problem becomes a ConfigError whose text is a single line naming the
file, the section, the key and the value, so startup can print it and exit.
"""

import configparser
import re
from dataclasses import dataclass

from twisted.logger import Logger

from sharqd.errors import ConfigError

log = Logger()


@dataclass(frozen=True)
class SharqSection:
    job_expire_interval: int = 1000
    job_requeue_interval: int = 1000
    default_job_requeue_limit: int = -1
    dead_letter_limit: int = 10000


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    accesslog: str = ""
    max_request_size: int = 1048576
    listen: str = ""
    idle_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 10000
    max_waiters: int = 5000
    log_format: str = "text"
    prometheus_refresh: float = 10.0


@dataclass(frozen=True)
class AuthSection:
    enabled: bool = False  # an [auth] section is present
    tokens_file: str = ""
    open_routes: tuple = ("/", "/status/")


@dataclass(frozen=True)
class RedisSection:
    db: int = 0
    key_prefix: str = "sharq_server"
    conn_type: str = "tcp_sock"
    unix_socket_path: str = ""
    host: str = "127.0.0.1"
    port: int = 6379
    password: str = ""
    clustered: bool = False
    timeout: float = 2.0
    startup_nodes: tuple = ()  # ((host, port), ...) besides host:port, clustered only
    wait_replicas: int = 0  # WAIT for this many replicas after an enqueue or finish
    wait_timeout: int = 100  # ms WAIT may take


@dataclass(frozen=True)
class Config:
    sharq: SharqSection = SharqSection()
    server: ServerSection = ServerSection()
    redis: RedisSection = RedisSection()
    auth: AuthSection = AuthSection()
    source: str = "<defaults>"

    @classmethod
    def from_file(cls, path):
        return cls.from_dict(read_sections(path), path)

    @classmethod
    def from_dict(cls, sections, source="<dict>"):
        """Build from {section: {key: text}}, as read from the INI file."""
        reader = _Reader(sections, source)
        config = cls(
            sharq=reader.section("sharq", SharqSection, _SHARQ_KEYS),
            server=reader.section("sharq-server", ServerSection, _SERVER_KEYS),
            redis=reader.section("redis", RedisSection, _REDIS_KEYS),
            auth=reader.section("auth", AuthSection, _AUTH_KEYS,
                                enabled="auth" in sections),
            source=source,
        )
        reader.warn_unknown_sections()
        _check_redis(config.redis, reader)
        _check_server(config.server, reader)
        _check_auth(config.auth, reader)
        return config


def read_sections(path):
    """The INI file as {section: {key: text}}."""
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None
    )
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text")
    except configparser.Error as e:
        raise ConfigError(f"{path}: not a valid INI file: {_one_line(e)}")
    return {s: dict(parser[s]) for s in parser.sections()}


def _one_line(error):
    return " ".join(str(error).split())


# ---- value parsers: text -> value, or ValueError with the rule broken ----

def _int_between(low, high):
    def parse(text):
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError("must be a whole number")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value
    return parse


def _seconds(text):
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number of seconds")


def _positive_seconds(text):
    value = _seconds(text)
    if not 0 < value <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds")
    return value


def _seconds_up_to(most):
    def parse(text):
        value = _seconds(text)
        if not 0 <= value <= most:
            raise ValueError(f"must be from 0 to {most} seconds")
        return value
    return parse


def _boolean(text):
    states = {"true": True, "yes": True, "on": True, "1": True,
              "false": False, "no": False, "off": False, "0": False}
    try:
        return states[text.lower()]
    except KeyError:
        raise ValueError("must be true or false")


def _one_of(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return text
    return parse


def _text(text):
    return text


def _routes(text):
    routes = tuple(text.replace(",", " ").split())
    for route in routes:
        if not route.startswith("/"):
            raise ValueError(f"{route!r} is not a path: list paths such as / /status/")
    return routes


def _host_ports(text):
    """"host:port, host:port" -> ((host, port), ...)."""
    nodes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port; give a comma-separated "
                             f"list of host:port")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def _key_prefix(text):
    # the prefix becomes part of every key and of the cluster hash tags
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", text):
        raise ValueError("must be 1-100 characters from A-Z a-z 0-9 _ . : -")
    return text


_MS = _int_between(1, 10**9)

_SHARQ_KEYS = {
    "job_expire_interval": _MS,
    "job_requeue_interval": _MS,
    "default_job_requeue_limit": _int_between(-1, 10**9),
    "dead_letter_limit": _int_between(0, 10**7),
}
_SERVER_KEYS = {
    "host": _text,
    "port": _int_between(0, 65535),
    "workers": _int_between(1, 256),
    "accesslog": _text,
    "max_request_size": _int_between(1, 2**31),
    "listen": _text,
    "idle_timeout": _positive_seconds,
    "header_timeout": _positive_seconds,
    "body_timeout": _positive_seconds,
    "max_connections": _int_between(1, 10**6),
    "max_waiters": _int_between(0, 10**6),
    "log_format": _one_of("text", "json"),
    "prometheus_refresh": _seconds_up_to(3600),
}
_REDIS_KEYS = {
    "db": _int_between(0, 1000000),
    "key_prefix": _key_prefix,
    "conn_type": _one_of("tcp_sock", "unix_sock"),
    "unix_socket_path": _text,
    "host": _text,
    "port": _int_between(1, 65535),
    "password": _text,
    "clustered": _boolean,
    "timeout": _positive_seconds,
    "startup_nodes": _host_ports,
    "wait_replicas": _int_between(0, 100),
    "wait_timeout": _int_between(1, 60000),
}
_AUTH_KEYS = {
    "tokens_file": _text,
    "open_routes": _routes,
}
_SECTIONS = ("sharq", "sharq-server", "redis", "auth")


class _Reader:
    """Parses sections, collecting the place of each value for error lines."""

    def __init__(self, sections, source):
        self.sections = sections
        self.source = source

    def fail(self, section, key, value, why):
        raise ConfigError(f"{self.source}: [{section}] {key} = {value!r}: {why}")

    def section(self, name, kind, parsers, **values):
        for key, text in self.sections.get(name, {}).items():
            if key not in parsers:
                log.warn("{source}: [{section}] unknown key {key!r} ignored",
                         source=self.source, section=name, key=key)
                continue
            text = text.strip()
            if text == "" and parsers[key] is _text:
                continue
            try:
                values[key] = parsers[key](text)
            except ValueError as e:
                self.fail(name, key, text, str(e))
        return kind(**values)

    def warn_unknown_sections(self):
        for name in self.sections:
            if name not in _SECTIONS:
                log.warn("{source}: unknown section [{section}] ignored",
                         source=self.source, section=name)


def _check_server(server, reader):
    # worker processes adopt the listening socket: only kinds they can wrap
    if server.workers > 1 and server.listen and \
            not server.listen.startswith(("tcp:", "tcp6:", "unix:", "ssl:")):
        reader.fail("sharq-server", "listen", server.listen,
                    "workers > 1 needs a tcp:, tcp6:, unix: or ssl: endpoint")


def _check_auth(auth, reader):
    if auth.enabled and not auth.tokens_file:
        reader.fail("auth", "tokens_file", "",
                    "is required in [auth] (remove the section to run without auth)")


def _check_redis(redis, reader):
    if redis.conn_type == "unix_sock" and not redis.unix_socket_path:
        reader.fail("redis", "unix_socket_path", "",
                    "is required when conn_type is unix_sock")
    if not redis.clustered:
        return
    if redis.db != 0:
        reader.fail("redis", "db", str(redis.db),
                    "Redis Cluster has only db 0; remove db or set it to 0")
    if redis.conn_type == "unix_sock":
        reader.fail("redis", "conn_type", "unix_sock",
                    "a Redis Cluster is reached over TCP; set conn_type = tcp_sock "
                    "with host and port (and startup_nodes)")
