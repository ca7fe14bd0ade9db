"""
A burst to many long-poll clients, end to end on a real `twistd -n sharq`
process: every waiting client gets its own job, and the connections held
back during the burst (an answered client's next request is read once the
others' jobs are on their way) are served again afterwards.
"""

import json
import socket

import pytest

from support import Sharqd, shared_redis, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 300
ASK = b"GET /dequeue/burst/?wait=30&lease=600000 HTTP/1.1\r\nHost: x\r\n\r\n"


def read_answer(sock, buffered=b""):
    """(status, decoded body, bytes after the answer) of one HTTP/1.1
    answer on a keep-alive connection."""
    data = buffered
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
    else:  # chunked, one chunk: what sharqd writes
        while b"0\r\n\r\n" not in rest:
            rest += _recv(sock)
        size, _, rest = rest.partition(b"\r\n")
        length = int(size, 16)
        rest = rest[:length] + rest[length + 2 + len(b"0\r\n\r\n"):]
    while len(rest) < length:
        rest += _recv(sock)
    return int(head.split(b" ")[1]), json.loads(rest[:length]), rest[length:]


def _recv(sock):
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("sharqd closed the connection")
    return data


def waiting(sharqd):
    status, _, _ = sharqd.request("GET", "/deepstatus/")
    assert status == 200
    conn = socket.create_connection(("127.0.0.1", sharqd.port), 10)
    try:
        conn.sendall(b"GET /prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    finally:
        conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("sharqd_longpoll_waiters"))


def burst(sharqd, clients, name):
    """One batch of a job per client; the job ids each client got."""
    wait_for(lambda: waiting(sharqd) == len(clients), timeout=30)
    jobs = [{"queue_id": f"q{k % 20}", "job_id": f"{name}{k}", "interval": 0,
             "payload": k} for k in range(len(clients))]
    status, body, _ = sharqd.request("POST", "/enqueue/burst/", {"jobs": jobs}, timeout=30)
    assert status == 201, body
    got = []
    for sock in clients:
        status, body, extra = read_answer(sock)
        assert (status, extra) == (200, b""), body
        got.append(body["job_id"])
        sock.sendall(ASK)  # and waits again
    return got


@pytest.fixture
def sharqd(tmp_path):
    server = Sharqd(str(tmp_path), shared_redis()).start()
    yield server
    server.stop()


def test_every_waiting_client_gets_its_own_job_burst_after_burst(sharqd):
    """When 300 clients wait on one type and one batch of 300 jobs is
    enqueued, every client gets exactly one job, no job twice; their next
    requests are served too: a second batch reaches every client again."""
    clients = [socket.create_connection(("127.0.0.1", sharqd.port), 30)
               for _ in range(CLIENTS)]
    try:
        for sock in clients:
            sock.sendall(ASK)
        first = burst(sharqd, clients, "a")
        second = burst(sharqd, clients, "b")
    finally:
        for sock in clients:
            sock.close()
    assert sorted(first) == sorted(f"a{k}" for k in range(CLIENTS))
    assert sorted(second) == sorted(f"b{k}" for k in range(CLIENTS))
