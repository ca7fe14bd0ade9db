"""
Bench harness of the long-poll/batch benches: a redis-server and a sharqd
(`twistd -n sharq -c <tmp conf>`) of their own, on loopback, and a minimal
asyncio HTTP/1.1 keep-alive client (so the client costs little CPU).
"""

import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import processes  # noqa: E402  (the process harness shared with the tests)
from processes import (cpu_seconds, free_port, tree_cpu_seconds,  # noqa: E402,F401
                       wait_for)  # (the benches import these from here)

TWISTD = os.environ.get("LPBENCH_TWISTD", "").split() or [os.path.join(os.path.dirname(sys.executable), "twistd")]


class Servers:
    """redis-server + one sharqd; use as a context manager."""

    def __init__(self, sharq_options="", server_options=""):
        self.dir = tempfile.mkdtemp(prefix="sharqd-lpbench-")
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
        self.redis = processes.RedisServer().start()
        self.redis_port = self.redis.port
        conf = os.path.join(self.dir, "sharq.conf")
        with open(conf, "w") as f:
            f.write(processes.sharq_conf(
                self.port, self.redis.port, "bench",
                sharq=f"job_expire_interval : 600000\n{self.sharq_options}",
                server=f"max_request_size : 10485760\n{self.server_options}"))
        self.sharqd = processes.SharqdProcess(
            TWISTD, conf, os.path.join(self.dir, "sharqd.log"), self.dir,
            twistd_args=os.environ.get("LPBENCH_TWISTD_ARGS", "").split()).start()
        self.sharqd.wait_listening(self.port)
        wait_for(lambda: "Subscribed to" in self.sharqd.read_log(), 10)

    def waiting(self):
        """How many long-poll requests wait in sharqd (its /prometheus
        gauge, added up over the workers)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/prometheus") as f:
            return sum(float(line.split()[-1]) for line in f.read().decode().splitlines()
                       if line.startswith("sharqd_longpoll_waiters"))

    def __exit__(self, *exc):
        if self.sharqd is not None:
            self.sharqd.stop()
        if self.redis is not None:
            self.redis.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


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


def parse_answer(buf):
    """(status, body, rest of buf) of the first whole HTTP/1.1 answer in
    buf (Content-Length or chunked), or None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, at = buf[:end].lower(), end + 4
    status = int(head[9:12])
    k = head.find(b"\r\ncontent-length:")
    if k >= 0:
        line_end = head.find(b"\r\n", k + 2)
        length = int(head[k + 17:line_end if line_end >= 0 else len(head)])
        if len(buf) < at + length:
            return None
        return status, buf[at:at + length], buf[at + length:]
    body = []
    while True:  # chunked
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buf[at:line_end].split(b";")[0], 16)
        if len(buf) < line_end + 2 + size + 2:
            return None
        if size == 0:
            return status, b"".join(body), buf[line_end + 4:]
        body.append(buf[line_end + 2:line_end + 2 + size])
        at = line_end + 2 + size + 2


class Poller(asyncio.Protocol):
    """One keep-alive connection asking the same request over and over,
    on the event loop's own callbacks (no per-line reads): the cheapest
    client Python has, so that 1,000 of them in one process cost the
    shared cores little.  Each answer goes to on_answer(time, status,
    body) the moment its last byte is read."""

    def __init__(self, request, on_answer):
        self.request = request
        self.on_answer = on_answer
        self.transport = None
        self.buf = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        now = time.time()
        self.buf += data
        while True:
            parsed = parse_answer(self.buf)
            if parsed is None:
                return
            status, body, self.buf = parsed
            self.transport.write(self.request)
            self.on_answer(now, status, body)

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(exc)


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
