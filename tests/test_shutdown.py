"""
Stopping and SIGHUP, end to end on real `twistd -n sharq` processes with
`workers = 2`: SIGTERM answers every long-poll client at once and stops
quickly and quietly; SIGHUP reopens the access log in every process.
"""

import json
import os
import signal
import socket
import time

import pytest

from support import Sharqd, has_unread_input, shared_redis, wait_for

pytestmark = pytest.mark.slow

STOPPED_CLEANLY = (0, -signal.SIGTERM)
# what must never appear in the log of a clean stop
TROUBLE = ("Traceback", "Unhandled", "CancelledError", "died", "still in flight",
           "Error")


def start_with_workers(tmp_path, extra_server=""):
    server = Sharqd(str(tmp_path), shared_redis(),
                    extra_server=f"workers : 2\n{extra_server}").start()

    def worker_listening():
        log = server.read_log()
        return "[worker 2]" in log and "listening" in log.split("[worker 2]", 1)[1]

    wait_for(worker_listening, timeout=30)
    return server


def server_connections(port):
    """How many established TCP connections the server on port holds,
    accepted or still in its backlog (from /proc/net/tcp)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def read_answer(sock):
    reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture
def server(tmp_path):
    started = []

    def start(**kwargs):
        started.append(start_with_workers(tmp_path, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.stop(signal.SIGKILL)


def test_sigterm_answers_100_waiting_clients_at_once(server):
    """When 100 clients wait on GET /dequeue/<type>/?wait=30 across two
    worker processes and sharqd gets SIGTERM, it stops in under 2 s, every
    client gets a 503 JSON answer saying sharqd is shutting down, and
    nothing is logged as an error."""
    sharqd = server()
    clients = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", sharqd.port), 10)
        sock.sendall(b"GET /dequeue/stopping/?wait=30 HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        clients.append(sock)
    # sharqd registers a waiter in the same turn as it reads the request
    wait_for(lambda: server_connections(sharqd.port) == 100 and
             not has_unread_input(sharqd.port), timeout=30)

    started = time.monotonic()
    sharqd.process.send_signal(signal.SIGTERM)
    code = sharqd.process.wait(20)
    took = time.monotonic() - started
    answers = [read_answer(sock) for sock in clients]
    for sock in clients:
        sock.close()

    assert code in STOPPED_CLEANLY
    assert took < 2, f"SIGTERM took {took:.2f} s"
    assert len(answers) == 100
    for status, body in answers:
        assert (status, body["status"]) == (503, "failure")
        assert "shutting down" in body["message"]
    log = sharqd.read_log()
    assert not [word for word in TROUBLE if word in log], log
    assert "Server Shut Down" in log


def test_sighup_reopens_the_access_log_in_every_process(server, tmp_path):
    """When logrotate renames the access log and sends SIGHUP to sharqd, the
    parent and every worker reopen it, and later requests are logged in
    the new file."""
    log = tmp_path / "access.log"
    sharqd = server(extra_server=f"accesslog : {log}")
    os.rename(log, str(log) + ".1")
    sharqd.process.send_signal(signal.SIGHUP)
    wait_for(lambda: sharqd.read_log().count("Reopened the access log") == 2, timeout=20)
    reopened = [line for line in sharqd.read_log().splitlines()
                if "Reopened the access log" in line]
    assert sum("[worker 2]" in line for line in reopened) == 1
    for i in range(20):
        assert sharqd.request("GET", f"/metrics/?n={i}")[0] == 200
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 20, timeout=20)
    assert "GET /metrics/?n=0 " in log.read_text()
    assert sharqd.stop() in STOPPED_CLEANLY
