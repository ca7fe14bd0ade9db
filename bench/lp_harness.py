"""
Bench harness of the long-poll/batch benches: a redis-server and a sharqd
(`twistd -n sharq -c <tmp conf>`) of their own, on loopback; a minimal
asyncio HTTP/1.1 keep-alive client (the producers), and PollingClients:
many clients asking the same request over and over, in a process of their
own (the long-poll waiters), so that the clients cost the shared cores
little.
"""

import asyncio
import gc
import multiprocessing
import os
import select
import shutil
import socket
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


def poll_forever(port, n, request, conn):
    """The loop of a PollingClients process: n keep-alive connections, each
    sending `request` again as soon as it has an answer; answers are kept
    as (time read, status, body) and handed over on the parent's asking."""
    gc.disable()  # a short-lived process with no garbage to speak of
    epoll = select.epoll()
    socks, buffers, answers, ok = {}, {}, [], [0]
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        socks[sock.fileno()], buffers[sock.fileno()] = sock, b""
        epoll.register(sock.fileno(), select.EPOLLIN)
        sock.send(request)
    epoll.register(conn.fileno(), select.EPOLLIN)
    waiting_for = None  # tell the parent once this many 200s are in
    while True:
        for fd, _ in epoll.poll():
            if fd == conn.fileno():
                command, arg = conn.recv()
                if command == "stop":
                    for sock in socks.values():
                        sock.close()
                    return
                if command == "fetch":  # the answers from index arg on
                    conn.send(answers[arg:])
                elif command == "tell":  # once arg answers are 200s
                    waiting_for = arg
            else:
                now = time.time()
                data = socks[fd].recv(65536)
                if not data:
                    answers.append((now, 0, b"connection closed"))
                    epoll.unregister(fd)
                    continue
                buffers[fd] += data
                while True:
                    parsed = parse_answer(buffers[fd])
                    if parsed is None:
                        break
                    status, body, buffers[fd] = parsed
                    socks[fd].send(request)
                    answers.append((now, status, body))
                    ok[0] += status == 200
            if waiting_for is not None and (ok[0] >= waiting_for or
                                            answers and answers[-1][1] not in (200, 404)):
                conn.send(ok[0])
                waiting_for = None


class PollingClients:
    """n clients asking the same request over and over, each on its own
    keep-alive connection, in a process of their own with a plain epoll
    loop (no asyncio, no threads): about 10 us of CPU per answer, and on
    a core of their own when there is one, so that the clients are not
    what a burst waits for."""

    def __init__(self, port, n, request):
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=poll_forever,
                                               args=(port, n, request, child), daemon=True)
        self.process.start()
        self.seen = 0

    async def tell(self, count, timeout):
        """Until count answers are 200s (or one is an error); how many are."""
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        loop.add_reader(self.conn.fileno(), lambda: arrived.done() or arrived.set_result(
            self.conn.recv()))
        try:
            self.conn.send(("tell", count))
            return await asyncio.wait_for(arrived, timeout)
        finally:
            loop.remove_reader(self.conn.fileno())

    def fetch(self):
        """The answers read since the last fetch: [(time, status, body)]."""
        self.conn.send(("fetch", self.seen))
        new = self.conn.recv()
        self.seen += len(new)
        return new

    def cpu_seconds(self):
        return cpu_seconds(self.process.pid)

    def stop(self):
        self.conn.send(("stop", None))
        self.process.join(10)


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
