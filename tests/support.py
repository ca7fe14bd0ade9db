"""
The one test harness: real redis-server and sharqd (`twistd -n sharq`)
processes on free ports, waits on observable conditions (a log line, a
command reaching Redis, a connection's TCP state), and a connected
RedisService for a test.  No fake Redis anywhere, no sleep-and-hope.
"""

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

from twisted.internet import reactor
from twisted.internet.task import deferLater

from sharqd.config import RedisSection
from sharqd.queue.operations import Queue
from sharqd.queue.channels import ready_listener, ready_pattern
from sharqd.redis.connection import RedisService, Subscription

import processes
from processes import free_port, wait_for  # noqa: F401 (the tests' names)


class RedisServer(processes.RedisServer):
    """A redis-server of our own (tests/processes.py), and the [redis]
    config section that reaches it."""

    def section(self, unix=False, **overrides):
        if self.password:
            overrides.setdefault("password", self.password)
        if unix:
            return RedisSection(conn_type="unix_sock", unix_socket_path=self.unix_socket,
                                **overrides)
        return RedisSection(port=self.port, **overrides)


_shared = None


def shared_redis():
    """One redis-server for the whole test run; tests use unique key prefixes."""
    global _shared
    if _shared is None:
        _shared = RedisServer().start()
        atexit.register(_shared.cleanup)
    return _shared


def unique_prefix():
    return "t" + uuid.uuid4().hex[:12]


class RedisMonitor:
    """A MONITOR connection: sees every command Redis runs, as it runs it."""

    def __init__(self, redis):
        self.sock = socket.create_connection(("127.0.0.1", redis.port), 5)
        self.sock.sendall(b"MONITOR\r\n")
        self.seen = b""

    def wait_count(self, text, count, timeout=10.0):
        """Wait until `count` commands mentioning text have run."""
        text = text.encode() if isinstance(text, str) else text
        deadline = time.monotonic() + timeout
        while self.seen.count(text) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Redis did not run {count} commands with {text!r}")
            self.sock.settimeout(left)
            try:
                self.seen += self.sock.recv(65536)
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


_OPEN_TCP_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT: not yet closed


def server_side_open(port, client_port):
    """Whether the server listening on port still holds its end of the
    connection from client_port open (from /proc/net/tcp, loopback IPv4)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (int(local.split(":")[1], 16) == port and
                    int(remote.split(":")[1], 16) == client_port and
                    state in _OPEN_TCP_STATES):
                return True
    return False


def has_unread_input(port):
    """Whether a connection to the server listening on port holds bytes the
    server has not read yet (its receive queue, from /proc/net/tcp): e.g. a
    command waiting in a paused Redis."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, queues = fields[1], fields[4]
            if int(local.split(":")[1], 16) == port and int(queues.split(":")[1], 16):
                return True
    return False


async def wait_until(predicate, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, step, lambda: None)


async def connected_service(testcase, section):
    """A started RedisService with a live connection, stopped at cleanup."""
    service = RedisService(section)
    service.startService()
    testcase.addCleanup(service.stopService)
    await wait_until(lambda: service.live)
    return service


def ready_subscription(section, prefix, listener, **kwargs):
    """The subscription to the ready channels of a prefix, as tap.py makes
    it, telling listener.notify(queue_type) and listener.subscribed(live)."""
    return Subscription(section, ready_pattern(prefix),
                        ready_listener(prefix, listener.notify), listener.subscribed,
                        **kwargs)


class Recorder:
    """A listener of the ready subscription that writes down what it hears."""

    def __init__(self):
        self.heard = []
        self.states = []

    def notify(self, queue_type):
        self.heard.append(queue_type)

    def subscribed(self, live):
        self.states.append(live)


class FakeClock:
    """Epoch seconds under the test's control, passed to Queue as `clock`."""

    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


async def make_queue(testcase, unix=False, expire_ms=1000):
    """A Queue on the shared Redis, with its own key prefix and a fake clock."""
    service = await connected_service(testcase, shared_redis().section(unix=unix))
    clock = FakeClock()
    return Queue(service.execute, unique_prefix(), expire_ms, clock=clock), clock


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def run_twistd(*args, cwd=None, timeout=30):
    """Run `twistd ARGS` on the tree under test to its end."""
    return subprocess.run([*TWISTD, *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=cwd, timeout=timeout)


def run_sharq_server(*args, timeout=30):
    """Run `sharq-server ARGS` on the tree under test to its end."""
    return subprocess.run([sys.executable, "-m", "sharqd.cli", *args],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=timeout)


class Sharqd:
    """`twistd -n sharq -c FILE` as a subprocess, on the tree under test."""

    def __init__(self, tmpdir, redis, extra_server="", extra_sharq="", extra_redis="",
                 unix=False, prefix=None):
        self.port = free_port()
        self.tmpdir = tmpdir
        self.config_path = os.path.join(tmpdir, f"sharq-{self.port}.conf")
        self.log_path = os.path.join(tmpdir, f"sharqd-{self.port}.log")
        if unix:
            where = f"conn_type : unix_sock\nunix_socket_path : {redis.unix_socket}\n"
        else:
            where = f"host : 127.0.0.1\nport : {redis.port}\n"
        with open(self.config_path, "w") as f:
            f.write(f"[sharq]\njob_expire_interval : 500\njob_requeue_interval : 100\n"
                    f"{extra_sharq}\n"
                    f"[sharq-server]\nhost : 127.0.0.1\nport : {self.port}\n{extra_server}\n"
                    f"[redis]\n{where}timeout : 1\nkey_prefix : {prefix or unique_prefix()}\n"
                    f"{extra_redis}\n")
        self.process = None

    def command(self):
        return [*TWISTD, "-n", "--pidfile=", "sharq", "-c", self.config_path]

    def start(self, wait=True):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.tmpdir)
        if wait:
            self.wait_listening()
        return self

    def listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def wait_listening(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sharqd exited:\n" + self.read_log())
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sharqd did not listen:\n" + self.read_log())

    def wait_log(self, text, count=1, timeout=15):
        """Wait until text is in the log count times (e.g. a startup or
        shutdown line)."""
        wait_for(lambda: self.read_log().count(text) >= count, timeout)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def request(self, method, path, body=None, timeout=10):
        """(status, decoded JSON body, seconds taken)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        started = time.monotonic()
        try:
            conn.request(method, path, body=data)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, json.loads(raw), time.monotonic() - started

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()
            self.process = None
        return code


class SilentListener:
    """A loopback port that accepts connections and never answers: a Redis
    that hangs (SIGSTOP) as a client sees it after reconnecting, since the
    kernel completes the TCP handshake for a stopped process.  close() stops
    listening and leaves the accepted connections hanging, so a real
    redis-server can take the port over."""

    def __init__(self):
        from twisted.internet.protocol import Factory, Protocol
        self.connections = []
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = self._build
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self._protocol = Protocol

    def _build(self, addr):
        protocol = self._protocol()
        self.connections.append(protocol)
        return protocol

    @property
    def accepted(self):
        return len(self.connections)

    def close(self):
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None

    def cleanup(self):
        for protocol in self.connections:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        return self.close()
