"""
`sharq-server -gc FILE`: the gunicorn config file of the original SharQ
Server, a Python file run as gunicorn runs it.  sharqd takes `bind`,
`workers` and `accesslog` from it where the sharq config does not set them;
every other name it defines is ignored, with one log line each.
"""

import os
import re
import runpy
import types

from twisted.logger import Logger

from sharqd.config import Config, read_sections
from sharqd.errors import ConfigError

log = Logger()

USED = ("bind", "workers", "accesslog")
ADDRESS_KEYS = ("host", "port", "listen")  # what bind stands for
GUNICORN_DEFAULT_PORT = 8000


def load(sharq_path, gunicorn_path, quiet=False):
    """The Config of sharq_path, with bind, workers and accesslog from the
    gunicorn config file where the sharq config does not set them.  quiet
    skips the log lines (worker processes read both files again)."""
    sections = read_sections(sharq_path)
    given = _read(gunicorn_path, quiet)
    server = dict(sections.get("sharq-server", {}))
    for name, keys in given.items():
        taken = [k for k in keys if k in server] if name != "bind" else \
            [k for k in ADDRESS_KEYS if k in server]
        if taken:
            if not quiet:
                log.warn("{gunicorn}: {name} not used: [sharq-server] {keys} in "
                         "{sharq} wins", gunicorn=gunicorn_path, name=name,
                         keys=", ".join(taken), sharq=sharq_path)
            continue
        server.update(keys)
    sections = dict(sections, **{"sharq-server": server})
    return Config.from_dict(sections, sharq_path)


def _read(path, quiet):
    """{setting: {[sharq-server] key: text}} of the settings sharqd uses."""
    names = _run(path)
    given = {}
    for name, value in names.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name not in USED:
            if not quiet:
                log.warn("{path}: gunicorn setting {name!r} ignored: sharqd uses "
                         "only bind, workers and accesslog", path=path, name=name)
            continue
        keys = _PARSERS[name](path, value, quiet)
        if keys:
            given[name] = keys
    return given


def _run(path):
    """The names the file defines, as gunicorn gets them: by running it."""
    if not os.path.isfile(path):
        why = "no such file" if not os.path.exists(path) else "not a file"
        raise ConfigError(f"{path}: cannot read gunicorn config file: {why}")
    try:
        return runpy.run_path(path, run_name="__config__")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read gunicorn config file: {e.strerror}")
    except (Exception, SystemExit) as e:
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        text = " ".join(str(e).split())
        raise ConfigError(f"{path}: cannot run gunicorn config file{where}: "
                          f"{type(e).__name__}: {text}")


def _fail(path, name, value, why):
    raise ConfigError(f"{path}: {name} = {value!r}: {why}")


def _bind(path, value, quiet):
    """bind: "host:port", "unix:PATH" (or a list: the first is used)."""
    if isinstance(value, (list, tuple)):
        if not value:
            return {}
        if len(value) > 1 and not quiet:
            log.warn("{path}: bind: sharqd listens on the first address only; "
                     "ignored: {rest}", path=path, rest=", ".join(map(str, value[1:])))
        value = value[0]
    if not isinstance(value, str):
        _fail(path, "bind", value, "must be a string, host:port or unix:PATH")
    text = value.strip()
    unix = re.match(r"unix:(//)?", text)
    if unix:
        socket_path = text[unix.end():]
        if not socket_path:
            _fail(path, "bind", value, "unix: needs a path")
        escaped = re.sub(r"([\\:=])", r"\\\1", socket_path)
        return {"listen": f"unix:address={escaped}"}
    if text.startswith("fd://"):
        _fail(path, "bind", value, "sharqd takes host:port or unix:PATH")
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    host, port = _host_port(text)
    if not re.fullmatch(r"\d{1,5}", port) or int(port) > 65535:
        _fail(path, "bind", value, "the port must be a number from 0 to 65535")
    return {"host": host or "0.0.0.0", "port": port}


def _host_port(text):
    """As gunicorn reads an address: [v6]:port, host:port, or host alone."""
    default = str(GUNICORN_DEFAULT_PORT)
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else default
    if ":" in text:
        host, port = text.split(":", 1)
        return host, port
    return text, default


def _workers(path, value, quiet):
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if type(value) is not int or not 1 <= value <= 256:
        _fail(path, "workers", value, "must be a whole number from 1 to 256")
    return {"workers": str(value)}


def _accesslog(path, value, quiet):
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        _fail(path, "accesslog", value, "must be the path of a file")
    if value.strip() == "-":
        if not quiet:
            log.warn("{path}: accesslog = '-' ignored: sharqd writes its access "
                     "log to a file only", path=path)
        return {}
    return {"accesslog": value.strip()}


_PARSERS = {"bind": _bind, "workers": _workers, "accesslog": _accesslog}
