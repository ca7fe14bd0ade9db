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
import shutil
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
from sharqd.redis.resp import encode_command

import processes
from processes import free_port, wait_for  # noqa: F401 (the tests' names)


class RedisServer(processes.RedisServer):
    """A redis-server of our own (tests/processes.py), and the [redis]
    config section that reaches it."""

    def kill(self):
        """SIGKILL: the node dies as in a crash."""
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def info(self, *args):
        """A command whose answer is one bulk string (INFO, CLUSTER INFO,
        CLUSTER NODES), as text."""
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            s.sendall(encode_command(args))
            data = b""
            while True:
                data += s.recv(65536)
                head, sep, rest = data.partition(b"\r\n")
                if sep and (head[:1] != b"$" or len(rest) >= int(head[1:]) + 2):
                    break
            return rest[:int(head[1:])].decode() if head[:1] == b"$" else head.decode()

    def section(self, unix=False, **overrides):
        if self.password:
            overrides.setdefault("password", self.password)
        if unix:
            return RedisSection(conn_type="unix_sock", unix_socket_path=self.unix_socket,
                                **overrides)
        return RedisSection(port=self.port, **overrides)


def resp_command(port, *args, timeout=10):
    """One command to the Redis on port; its reply decoded (bytes, int,
    list, None; an error reply as RuntimeError)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(encode_command(args))
        return _read_reply(s.makefile("rb"))


def _read_reply(f):
    line = f.readline()[:-2]
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = f.read(int(rest) + 2)
        return data[:-2]
    if kind == b"*":
        return None if int(rest) < 0 else [_read_reply(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class RedisCluster:
    """A Redis Cluster of our own: 3 masters and 3 replicas on free
    loopback ports, each node in its own temporary folder."""

    def __init__(self, masters=3, replicas=1, node_timeout=2000, appendonly=False):
        self.node_timeout = node_timeout
        self.replicas = replicas
        self.nodes = [RedisServer(appendonly=appendonly, port=processes.free_cluster_port(), options=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout)])
            for _ in range(masters * (1 + replicas))]

    def start(self):
        for node in self.nodes:
            node.start()
        if len(self.nodes) == 1:  # redis-cli creates clusters of 3 masters or more
            resp_command(self.nodes[0].port, "CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            self.wait_ok()
            return self
        subprocess.run([REDIS_CLI, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def running(self):
        return [n for n in self.nodes if n.process is not None]

    def wait_ok(self, timeout=30):
        """Until every running node says cluster_state:ok and agrees on
        which nodes are masters with slots, and every other running node
        is a replica that has its master's data (redis-cli makes them
        replicas after the cluster says ok; until then a write with
        wait_replicas finds no replica to wait for)."""
        def ok():
            try:
                views = {tuple(sorted(self.masters_seen_by(n))) for n in self.running()}
                masters = next(iter(views))
                synced = all("master_link_status:up" in n.info("INFO", "replication")
                             for n in self.running() if n.port not in masters)
                return all("cluster_state:ok" in n.info("CLUSTER", "INFO")
                           for n in self.running()) and len(views) == 1 and synced
            except OSError:
                return False
        wait_for(ok, timeout, step=0.1)

    def masters_seen_by(self, node):
        """Ports of the masters holding slots, as node sees them."""
        ports = []
        for line in node.info("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return ports

    def masters(self):
        return [self.node(p) for p in self.masters_seen_by(self.running()[0])]

    def master_of(self, slot):
        for line in self.running()[0].info("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                start, _, end = part.partition("-")
                if int(start) <= slot <= int(end or start):
                    return self.node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return None

    def node_id(self, node):
        return resp_command(node.port, "CLUSTER", "MYID").decode()

    def move_slot(self, slot, target, step=10, pause=0.02):
        """Migrate a slot to the master target as `redis-cli --cluster
        reshard` does: IMPORTING/MIGRATING, MIGRATE step keys at a time
        (pause s apart, so traffic runs meanwhile), then SETSLOT NODE."""
        source = self.master_of(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        resp_command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        resp_command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = resp_command(source.port, "CLUSTER", "GETKEYSINSLOT", slot, step)
            if not keys:
                break
            resp_command(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                         "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)  # the migration's own pace, not a wait for a condition
        for node in [target, source] + [m for m in self.masters() if m not in (source, target)]:
            resp_command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return source, moved

    def section(self, **overrides):
        first = self.nodes[0]
        others = tuple(("127.0.0.1", n.port) for n in self.nodes[1:3])
        return RedisSection(port=first.port, clustered=True, startup_nodes=others,
                            **overrides)

    def config_lines(self):
        return (f"host : 127.0.0.1\nport : {self.nodes[0].port}\nclustered : true\n"
                f"startup_nodes : " + ", ".join(f"127.0.0.1:{n.port}" for n in self.nodes[1:3])
                + "\n")

    def cleanup(self):
        for node in self.nodes:
            node.cleanup()


_shared = None
_shared_cluster = None


def shared_cluster():
    """One Redis Cluster for the whole test run (started on first use, in
    about two seconds); tests use unique key prefixes."""
    global _shared_cluster
    if _shared_cluster is None:
        _shared_cluster = RedisCluster().start()
        atexit.register(_shared_cluster.cleanup)
    return _shared_cluster


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


async def connected_cluster(testcase, section):
    """A started ClusterService with its slot map and a live connection to
    every master, stopped at cleanup."""
    from sharqd.redis.cluster import ClusterService
    service = ClusterService(section)
    service.startService()
    testcase.addCleanup(service.stopService)
    await wait_until(lambda: service.masters() and
                     all(p.live for p in service.pools.values()))
    return service


def cluster_subscription(testcase, prefix, listener):
    """The ready subscription on the shared cluster, as tap.py makes it,
    started on a replica: PUBLISH on a master reaches it through the
    cluster bus."""
    from sharqd.redis.cluster import ClusterService, ClusterSubscription
    cluster = shared_cluster()
    replica = next(n for n in cluster.running() if n not in cluster.masters())
    seeds = ClusterService(RedisSection(port=replica.port, clustered=True))
    return ClusterSubscription(seeds, ready_pattern(prefix),
                               ready_listener(prefix, listener.notify), listener.subscribed)


async def make_queue(testcase, unix=False, expire_ms=1000, cluster=False):
    """A Queue on the shared Redis (or the shared cluster), with its own key
    prefix and a fake clock."""
    clock = FakeClock()
    if cluster:
        service = await connected_cluster(testcase, shared_cluster().section())
        return Queue(service.execute, unique_prefix(), expire_ms, clock=clock,
                     masters=service.masters, node_of=service.node_of), clock
    service = await connected_service(testcase, shared_redis().section(unix=unix))
    return Queue(service.execute, unique_prefix(), expire_ms, clock=clock), clock


async def all_keys(queue, pattern="*"):
    """KEYS of the queue's prefix on every master, sorted."""
    keys = []
    for execute in queue.masters():
        keys += await execute(b"KEYS", f"{queue.prefix}:{pattern}")
    return sorted(keys)


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


class Sharqd(processes.SharqdProcess):
    """`twistd -n sharq -c FILE` as a subprocess, on the tree under test
    (tests/processes.py), with a config of its own."""

    def __init__(self, tmpdir, redis, extra_server="", extra_sharq="", extra_redis="",
                 unix=False, prefix=None):
        self.port = free_port()
        self.tmpdir = tmpdir
        self.config_path = os.path.join(tmpdir, f"sharq-{self.port}.conf")
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
        super().__init__(TWISTD, self.config_path,
                         os.path.join(tmpdir, f"sharqd-{self.port}.log"), tmpdir)

    def start(self, wait=True):
        super().start()
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
        super().wait_listening(self.port, timeout)

    def wait_log(self, text, count=1, timeout=15):
        """Wait until text is in the log count times (e.g. a startup or
        shutdown line)."""
        wait_for(lambda: self.read_log().count(text) >= count, timeout)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

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
