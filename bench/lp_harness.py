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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import processes  # noqa: E402  (the process harness shared with the tests)
from processes import cpu_seconds, free_port, wait_for  # noqa: E402,F401 (benches' names)

TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]


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


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
