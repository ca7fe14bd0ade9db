"""
The process harness of the tests and the benches: redis-server and sharqd
(`twistd -n sharq -c FILE`) processes of their own on free loopback ports,
stopped with their whole process group, and the CPU time they used.

Stdlib only (and sharqd's RESP encoder, which is too): bench/ runs it
from any Python 3.  tests/support.py builds the tests' helpers on it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ imports this file from any directory
    sys.path.insert(0, ROOT)

from sharqd.redis.resp import encode_command  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port > 55000:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def wait_for(check, timeout=10.0, step=0.02):
    """Poll check() until it gives something true, and return that; fail
    after timeout seconds (a generous bound: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def proc_stat(pid):
    """(ppid, pgrp, utime+stime, cutime+cstime) in ticks, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]))


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    stat = proc_stat(pid)
    return 0.0 if stat is None else stat[2] / CLK_TCK


def process_tree(root):
    """root and every live process in its process group or below it."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st:
                stats[int(name)] = st
    members = {p for p, st in stats.items() if p == root or st[1] == root}
    grew = True
    while grew:
        grew = False
        for p, st in stats.items():
            if p not in members and st[0] in members:
                members.add(p)
                grew = True
    return {p: stats[p] for p in members}


def tree_cpu_seconds(root):
    """CPU seconds of root's process tree (workers included, also those
    that ended and were reaped), and how many processes it has."""
    tree = process_tree(root)
    ticks = sum(st[2] for st in tree.values())
    if root in tree:
        ticks += tree[root][3]
    return ticks / CLK_TCK, len(tree)


def stop_group(proc, grace=15):
    """SIGTERM the process group led by proc, then SIGKILL what is left.
    True when all of it is gone."""
    if proc is None:
        return True
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its group may still hold workers
        if not any(st[1] == proc.pid for st in process_tree(proc.pid).values()):
            return True
    return False


def _ping(port, password=None):
    with socket.create_connection(("127.0.0.1", port), 0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """A redis-server of our own, on a free TCP port and a unix socket, in
    its own process group, no persistence unless appendonly."""

    def __init__(self, appendonly=False, password=None, port=None, options=()):
        self.dir = tempfile.mkdtemp(prefix="sharqd-redis-")
        self.port = port or free_port()
        self.unix_socket = os.path.join(self.dir, "redis.sock")
        self.appendonly = appendonly
        self.password = password
        self.options = list(options)  # more redis-server arguments
        self.process = None

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.unix_socket, "--unixsocketperm", "700",
                "--dir", self.dir, "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", *self.options]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if _ping(self.port):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def pause(self):
        """SIGSTOP: Redis keeps its connections but answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def call(self, *args, db=0):
        """One command on a fresh connection (AUTH and SELECT first as
        needed); the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            if self.password:
                s.sendall(encode_command(("AUTH", self.password)))
                s.recv(64)
            if db:
                s.sendall(encode_command(("SELECT", db)))
                s.recv(64)
            s.sendall(encode_command(args))
            return s.recv(4096).split(b"\r\n")[0]

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def sharq_conf(port, redis_port, prefix, sharq="", server="", redis=""):
    """A sharq.conf text: sharqd on 127.0.0.1:port over Redis at redis_port
    (or, with redis given as conn_type/unix_socket_path lines, a socket)."""
    where = redis if "unix_socket_path" in redis else \
        f"host : 127.0.0.1\nport : {redis_port}\n{redis}"
    return (f"[sharq]\n{sharq}\n"
            f"[sharq-server]\nhost : 127.0.0.1\nport : {port}\n{server}\n"
            f"[redis]\n{where}\nkey_prefix : {prefix}\n")


class SharqdProcess:
    """`twistd -n sharq -c FILE` of the tree under test (PYTHONPATH = the
    repository), in its own process group, logging to a file; with
    `workers`, its process tree holds them all."""

    def __init__(self, twistd, config_path, log_path, cwd, env=None, twistd_args=(),
                 source_tree=True):
        self.twistd, self.twistd_args = list(twistd), list(twistd_args)
        self.config_path = config_path
        self.log_path = log_path
        self.cwd = cwd
        self.env, self.source_tree = env, source_tree
        self.process = None

    def command(self):
        return [*self.twistd, "-n", "--pidfile=", *self.twistd_args, "sharq",
                "-c", self.config_path]

    def start(self):
        env = dict(os.environ if self.env is None else self.env)
        if self.source_tree:  # else the sharqd installed where twistd runs
            env["PYTHONPATH"] = ROOT
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.cwd, start_new_session=True)
        return self

    @property
    def pid(self):
        return self.process.pid

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_listening(self, port, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("sharqd exited:\n" + self.read_log())
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sharqd did not listen:\n" + self.read_log())

    def wait_answering(self, port, path="/deepstatus/", timeout=30):
        """Until GET path answers 200 (Redis reachable, for /deepstatus/)."""
        def answers():
            if self.process.poll() is not None:
                raise RuntimeError("sharqd exited:\n" + self.read_log())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        try:
            wait_for(answers, timeout, step=0.1)
        except AssertionError:
            raise RuntimeError(f"sharqd did not answer {path} within {timeout} s:\n"
                               + self.read_log()) from None

    def stop(self):
        if self.process is not None:
            stop_group(self.process)
            self.log.close()
            self.process = None
