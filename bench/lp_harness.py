"""
Bench harness of the long-poll/batch benches: a redis-server and a sharqd
(`twistd -n sharq -c <tmp conf>`) of their own, on loopback, and a minimal
asyncio HTTP/1.1 keep-alive client (so the client costs little CPU).
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Servers:
    """redis-server + one sharqd; use as a context manager."""

    def __init__(self, sharq_options="", server_options=""):
        self.dir = tempfile.mkdtemp(prefix="sharqd-lpbench-")
        self.redis_port = free_port()
        self.port = free_port()
        self.sharq_options = sharq_options
        self.server_options = server_options
        self.redis = self.sharqd = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self):
        self.redis = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.redis_port, self.redis)
        conf = os.path.join(self.dir, "sharq.conf")
        with open(conf, "w") as f:
            f.write(f"[sharq]\njob_expire_interval : 600000\n{self.sharq_options}\n"
                    f"[sharq-server]\nhost : 127.0.0.1\nport : {self.port}\n"
                    f"max_request_size : 10485760\n{self.server_options}\n"
                    f"[redis]\nhost : 127.0.0.1\nport : {self.redis_port}\n"
                    f"key_prefix : bench\n")
        self.log = open(os.path.join(self.dir, "sharqd.log"), "wb")
        self.sharqd = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", *os.environ.get("LPBENCH_TWISTD_ARGS", "").split(),
             "sharq", "-c", conf], cwd=self.dir,
            env=dict(os.environ, PYTHONPATH=ROOT), stdout=self.log,
            stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.sharqd)
        deadline = time.monotonic() + 10
        while b"Subscribed to" not in open(self.log.name, "rb").read():
            if time.monotonic() > deadline:
                raise RuntimeError("sharqd did not subscribe")
            time.sleep(0.05)

    def __exit__(self, *exc):
        for process in (self.sharqd, self.redis):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_port(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method, path, body=b""):
        """(status, body bytes)"""
        head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length)
        body = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return status, b"".join(body)
            body.append(await self.reader.readexactly(size))
            await self.reader.readline()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
