"""
Regressions of defects found by black-box probes, each on a real `twistd
-n sharq` process and a real redis-server: every answer is JSON, HEAD does
not dequeue, numbers are finite and plain.
"""

import json
import socket

import pytest

from support import Sharqd, shared_redis

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sharqd = Sharqd(str(tmp_path_factory.mktemp("defects")), shared_redis()).start()
    yield sharqd
    sharqd.stop()


def raw(server, data, timeout=10):
    """Send bytes as they are and read until the server closes; (status,
    headers text, body bytes) of the answer.  Give `Connection: close`
    where the request is valid enough to be kept alive."""
    with socket.create_connection(("127.0.0.1", server.port), timeout) as sock:
        sock.sendall(data)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        chunks = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            size = int(size, 16)
            chunks, body = chunks + rest[:size], rest[size + 2:]
        body = chunks
    return int(head.split(b" ")[1]), head.decode("latin-1"), body


def assert_json_failure(answer, status):
    code, head, body = answer
    assert code == status, (head, body)
    assert "content-type: application/json" in head.lower(), head
    decoded = json.loads(body)
    assert decoded["status"] == "failure" and decoded["message"], decoded
    return decoded["message"]


def job(job_id, **payload):
    return {"job_id": job_id, "interval": 0, "payload": payload}


def test_non_finite_number_is_refused(server):
    """When a body holds a number no double holds (1e400), the answer is
    400 and nothing is stored, so no dequeue can answer `Infinity`."""
    for number in (b"1e400", b"-1e400"):
        body = b'{"job_id": "big", "interval": 0, "payload": {"x": %s}}' % number
        status, answer, _ = server.request("POST", "/enqueue/inf/q1/", body)
        assert status == 400 and "out of range" in answer["message"]
    assert server.request("GET", "/dequeue/inf/")[0] == 404
    status, _, _ = server.request("POST", "/enqueue/inf/q1/", b'{"job_id": "ok", '
                                  b'"interval": 0, "payload": {"x": 1e300}}')
    assert status == 201
    status, answer, _ = server.request("GET", "/dequeue/inf/")
    assert (status, answer["payload"]) == (200, {"x": 1e300})


def test_head_does_not_dequeue(server):
    """When a client sends HEAD /dequeue/<type>/, the answer is 405 with
    Allow: GET, and the job stays for the next GET."""
    assert server.request("POST", "/enqueue/head/q1/", job("j1"))[0] == 201
    for path in ("/dequeue/head/", "/dequeue/"):
        code, head, _ = raw(server, b"HEAD %s HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n" % path.encode())
        assert code == 405 and "allow: get" in head.lower()
    status, answer, _ = server.request("GET", "/dequeue/head/")
    assert (status, answer["job_id"]) == (200, "j1")


@pytest.mark.parametrize("target", [b"?a=1", b"*", b"dequeue/x/",
                                    b"http://localhost/dequeue/x/"])
def test_target_without_leading_slash_is_json_400(server, target):
    """When the request target does not start with `/`, the answer is 400
    JSON saying so, not a 500 page."""
    message = assert_json_failure(
        raw(server, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                % target), 400)
    assert "`/`" in message


@pytest.mark.parametrize("host", [b"a" * 64, b"a..b", b".a", b"\xff"])
def test_host_header_werkzeug_rejects_is_json_400(server, host):
    """When the Host header is no valid host name, every route answers 400
    JSON naming the Host header."""
    for path in (b"/metrics/", b"/dequeue/x/"):
        message = assert_json_failure(
            raw(server, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % (path, host)), 400)
        assert "Host" in message


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",                                          # request line
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",                  # header line
    b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",                    # header name
    b"POST /enqueue/x/y/ HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    b"POST /enqueue/x/y/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /enqueue/x/y/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",  # line length
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100)
                                     for i in range(200)) + b"\r\n",  # header size
])
def test_malformed_http_is_json_400(server, request_bytes):
    """When twisted.web cannot parse a request, the answer is still 400
    with a JSON body (twisted.web's own has none)."""
    assert_json_failure(raw(server, request_bytes), 400)


@pytest.mark.parametrize("query", ["wait=1_0", "wait=%201", "wait=1e1", "wait=inf",
                                   "wait=nan", "wait=%D9%A1", "count=1_0",
                                   "count=%2B5", "lease=1_000", "wait=0x10"])
def test_numeric_query_arguments_are_plain_decimals(server, query):
    """When a numeric query argument is anything but a plain decimal number
    (underscores, spaces, exponents, inf, non-ASCII digits), the answer is
    400 at once, without waiting."""
    status, answer, took = server.request("GET", f"/dequeue/plain/?{query}")
    assert status == 400 and "has an invalid value" in answer["message"]
    assert took < 5


def test_plain_decimal_wait_is_accepted(server):
    """When wait is a plain decimal number (0.2, .2, 1), it is used."""
    for wait in ("0.2", ".2", "1"):
        status, _, _ = server.request("GET", f"/dequeue/plain/?wait={wait}")
        assert status == 404
