"""
`log_format = json`: a real `twistd -n sharq` process writes one JSON object
per line, its workers' lines included; the access log keeps its format.
"""

import json
import signal

import pytest

from sharqd.logs import json_line
from support import Sharqd, shared_redis, wait_for




@pytest.fixture
def start(tmp_path):
    started = []

    def run(extra=""):
        server = Sharqd(str(tmp_path), shared_redis(),
                        extra_server="log_format : json\n" + extra).start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop(signal.SIGKILL)


def records(server):
    text = server.read_log()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_json_log_lines(start, tmp_path):
    """When log_format is json, every log line is a JSON object with time,
    level, namespace and message, and the event's fields; the access log
    stays in combined format."""
    access = tmp_path / "access.log"
    server = start(f"accesslog : {access}")
    server.request("GET", "/")
    server.stop()
    lines = records(server)  # json.loads of each: no line is plain text
    assert lines and all({"time", "level", "namespace", "message"} <= set(r) for r in lines)
    (listening,) = [r for r in lines if r["message"].startswith("sharqd listening on")]
    assert listening["level"] == "info"
    assert listening["namespace"] == "sharqd.web.site.HTTPService"
    assert listening["fields"]["where"] == f"tcp:{server.port}:interface=127.0.0.1"
    assert listening["time"].endswith("Z")
    assert '"GET / HTTP/1.1" 200' in access.read_text()


@pytest.mark.slow
def test_json_log_of_workers(start):
    """When workers log in JSON, their lines reach the parent's log as JSON
    objects marked with the worker's number."""
    server = start("workers : 2")
    wait_for(lambda: any(r.get("worker") == 2 and "listening" in r["message"]
                         for r in records(server)))


def test_failure_has_traceback():
    """When an event carries a failure, the line has its traceback."""
    from twisted.logger import LogLevel
    from twisted.python.failure import Failure
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    record = json.loads(json_line({
        "log_level": LogLevel.critical, "log_namespace": "x", "log_time": 0,
        "log_format": "Boom on {path}", "path": b"/enqueue/", "log_failure": failure}))
    assert record["message"] == "Boom on b'/enqueue/'"
    assert record["fields"] == {"path": "/enqueue/"}
    assert "ZeroDivisionError" in record["traceback"]
    assert record["level"] == "critical"
