"""
Slow and greedy clients: header_timeout (slowloris), idle_timeout,
max_connections, max_waiters.  Timers in memory with task.Clock; the
limits on a real `twistd` process with real sockets.
"""

import http.client
import json
import resource
import socket
import statistics
import threading
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sharqd.web.site import SharqSite
from support import Sharqd, shared_redis, wait_for


class _Pages(Resource):
    """/ answers at once; /hold/ never answers (a long-poll)."""

    isLeaf = True

    def render(self, request):
        if request.path == b"/hold/":
            return NOT_DONE_YET
        return b"{}"


def connection(clock, **limits):
    site = SharqSite(_Pages(), 1024, reactor=clock, **limits)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return site, channel, transport


def test_slow_headers_are_dropped():
    """When a client sends one header line every 4 s (each byte restarts
    the idle timeout), it is dropped header_timeout after it connected."""
    clock = Clock()
    _, channel, transport = connection(clock, header_timeout=10, idle_timeout=60)
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for i in range(2):
        clock.advance(4)
        channel.dataReceived(b"X-Slow-%d: 1\r\n" % i)
    assert not transport.disconnecting
    clock.advance(2.1)
    assert transport.disconnected  # aborted, not a polite close


def test_header_clock_runs_per_request():
    """When a keep-alive connection sends its next request after a pause,
    the header clock starts at that request's first byte, not before."""
    clock = Clock()
    _, channel, transport = connection(clock, header_timeout=10, idle_timeout=60)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in transport.value()
    clock.advance(30)  # idle between requests: header_timeout does not apply
    assert not transport.disconnecting
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    clock.advance(9)
    channel.dataReceived(b"Host: x\r\n\r\n")
    clock.advance(5)
    assert not transport.disconnecting
    assert transport.value().count(b"200 OK") == 2


def test_idle_connection_closed_but_long_poll_is_not_idle():
    """When a keep-alive connection says nothing for idle_timeout it is
    closed; a request still being answered (long-poll) keeps it open."""
    clock = Clock()
    _, channel, transport = connection(clock, header_timeout=10, idle_timeout=60)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting

    _, channel, transport = connection(clock, header_timeout=10, idle_timeout=60)
    channel.dataReceived(b"GET /hold/ HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(600)
    assert not transport.disconnecting


def test_slow_body_is_answered_408_and_dropped():
    """When a client sends complete headers, then its body one byte every
    4 s (each byte restarts the idle timeout), it is answered 408 JSON and
    the connection is closed body_timeout after the headers."""
    clock = Clock()
    _, channel, transport = connection(clock, body_timeout=30, idle_timeout=60)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(7):
        clock.advance(4)
        channel.dataReceived(b"{")
    assert not transport.disconnecting
    clock.advance(2.1)
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert "body_timeout (30 s)" in json.loads(body)["message"]
    assert transport.disconnecting


def test_body_clock_stops_when_the_body_is_complete():
    """When a body arrives in time, the request is answered and the body
    clock does not fire later on the kept-alive connection."""
    clock = Clock()
    _, channel, transport = connection(clock, body_timeout=30, idle_timeout=600)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
    clock.advance(29)
    channel.dataReceived(b"{}")
    clock.advance(100)
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert b" 408 " not in transport.value() and not transport.disconnecting


def test_connections_beyond_the_limit_are_refused_with_503():
    """When max_connections are open, the next one is told 503 JSON with
    Retry-After and closed; once one closes, a new one is served."""
    clock = Clock()
    site = SharqSite(_Pages(), 1024, reactor=clock, max_connections=2)
    address = IPv4Address("TCP", "127.0.0.1", 1234)
    open_ = [site.buildProtocol(address) for _ in range(2)]
    for channel in open_:
        channel.makeConnection(StringTransport())
    refused, transport = site.buildProtocol(address), StringTransport()
    refused.makeConnection(transport)
    refused.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
    assert "max_connections = 2" in json.loads(body)["message"]
    assert transport.disconnecting
    open_[0].connectionLost(None)
    served, transport = site.buildProtocol(address), StringTransport()
    served.makeConnection(transport)
    served.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")


# ---- on a real process

def get(port, path, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), \
            time.monotonic() - started, response.getheader("retry-after")
    finally:
        conn.close()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


@pytest.fixture
def server(tmp_path):
    started = []

    def start(**kwargs):
        started.append(Sharqd(str(tmp_path), shared_redis(), **kwargs).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.mark.slow
def test_slowloris_is_dropped_while_others_are_served(server):
    """When a client sends one header line every 0.4 s with header_timeout
    1 s, sharqd drops it after about a second, and a normal client is
    served meanwhile."""
    sharqd = server(extra_server="header_timeout : 1")
    slow = socket.create_connection(("127.0.0.1", sharqd.port))
    slow.sendall(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    dropped = None
    while time.monotonic() - started < 10:
        time.sleep(0.4)
        try:
            slow.sendall(b"X-Slow: 1\r\n")
        except OSError:
            dropped = time.monotonic() - started
            break
        assert get(sharqd.port, "/")[0] == 200
    slow.close()
    assert dropped is not None and dropped < 5


@pytest.mark.slow
def test_5000_half_open_connections_do_not_stop_normal_clients(server):
    """When 5,000 clients have sent half of their request headers and wait,
    a normal client is still answered at once (median under 100 ms), and
    sharqd's memory grows by a bounded amount (under 40 KB a connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5300:
        pytest.skip(f"the descriptor hard limit ({hard}) is below 5,300")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 5300), hard))
    sharqd = server(extra_server="header_timeout : 120")
    before = rss_kb(sharqd.process.pid)
    held = []
    try:
        for _ in range(5000):
            s = socket.create_connection(("127.0.0.1", sharqd.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        times = []
        for _ in range(10):
            status, _, took, _ = get(sharqd.port, "/")
            assert status == 200
            times.append(took)
        grown = rss_kb(sharqd.process.pid) - before
        print(f"\n5,000 half-open: normal request median {statistics.median(times) * 1000:.1f} ms"
              f", max {max(times) * 1000:.1f} ms; sharqd RSS +{grown / 1024:.1f} MB")
        assert statistics.median(times) < 0.1
        assert grown < 5000 * 40
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_max_connections_refuses_the_rest_and_serves_the_open(server):
    """When max_connections are open, another client is answered 503 JSON
    with Retry-After, while the open connections are still served."""
    sharqd = server(extra_server="max_connections : 20")
    held = []
    try:
        for _ in range(20):  # each one served once, so sharqd counts it
            held.append(socket.create_connection(("127.0.0.1", sharqd.port)))
            held[-1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held[-1].recv(1000).startswith(b"HTTP/1.1 200 OK")
        status, body, _, retry = get(sharqd.port, "/")
        assert (status, retry) == (503, "1")
        assert "max_connections = 20" in body["message"]
        for s in held:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    finally:
        for s in held:
            s.close()
    wait_for(lambda: get(sharqd.port, "/")[0] == 200)


@pytest.mark.slow
def test_max_waiters_gives_503_with_retry_after(server):
    """When max_waiters long-polls wait, one more is answered 503 with
    Retry-After at once; the waiting ones keep waiting."""
    sharqd = server(extra_server="max_waiters : 2")
    results = []
    clients = [threading.Thread(target=lambda: results.append(
        get(sharqd.port, "/dequeue/lw/?wait=4"))) for _ in range(3)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    results.sort(key=lambda r: r[0])
    assert [r[0] for r in results] == [404, 404, 503]
    _, body, took, retry = results[2]
    assert retry == "1" and took < 1
    assert "max_waiters = 2" in body["message"]
    assert all(r[2] >= 3.9 for r in results[:2])  # they waited their time out


def test_descriptor_limit_raised_or_connections_lowered():
    """When max_connections needs more descriptors than the soft limit,
    sharqd raises the soft limit up to the hard one; when the hard limit
    is too low, it serves as many connections as fit and says so."""
    import subprocess
    import sys
    from support import ROOT
    code = ("import resource; from sharqd.web.site import raise_fd_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (300, {hard})); "
            "print(raise_fd_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    for hard, expected in ((4096, "1000 1256"), (600, "344 600")):
        out = subprocess.run([sys.executable, "-c", code.format(hard=hard)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.split() == expected.split(), out.stderr
