"""
A minimal blocking Redis client (RESP2 over TCP) for the bench driver:
single calls and pipelines.  Stdlib only (and sharqd's own RESP encoder,
which is too).
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sharqd.redis.resp import encode_command  # noqa: E402


class RespError(Exception):
    """An error reply from Redis."""


class Redis:
    def __init__(self, host="127.0.0.1", port=6379, timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def close(self):
        try:
            self.file.close()
        finally:
            self.sock.close()

    encode = staticmethod(encode_command)

    def _read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"bad RESP line {line[:60]!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands, chunk=1000):
        """Send commands (lists of args) in chunks; returns all replies
        (errors are returned as RespError values, not raised)."""
        replies = []
        for i in range(0, len(commands), chunk):
            part = commands[i:i + chunk]
            self.sock.sendall(b"".join(self.encode(c) for c in part))
            replies.extend(self._read() for _ in part)
        return replies

    def info(self, section=None):
        text = self.call("INFO", *([section] if section else [])).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out
