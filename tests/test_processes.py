"""
Long-poll across sharqd processes: two `twistd -n sharq -c conf` processes
on different ports share one redis-server; a waiter on one is woken by an
enqueue through the other.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from support import RedisServer, free_port, unique_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

CONF = """\
[sharq]
job_expire_interval : 5000
job_requeue_interval : 1000

[sharq-server]
host : 127.0.0.1
port : {port}

[redis]
host : 127.0.0.1
port : {redis_port}
key_prefix : {prefix}
"""


class Sharqd:
    """One sharqd process of our own."""

    def __init__(self, directory, redis_port, prefix):
        self.port = free_port()
        self.dir = directory
        self.conf = os.path.join(directory, f"sharq-{self.port}.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(port=self.port, redis_port=redis_port, prefix=prefix))
        self.log = open(os.path.join(directory, f"sharqd-{self.port}.log"), "wb")
        self.process = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "sharq", "-c", self.conf],
            cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sharqd exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    pass
                if b"Subscribed to" in self.output():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sharqd did not start: {self.output()}")

    def output(self):
        with open(self.log.name, "rb") as f:
            return f.read()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


class TwoProcesses(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sharqd-procs-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        prefix = unique_prefix()
        self.a = Sharqd(self.dir, self.redis.port, prefix)
        self.b = Sharqd(self.dir, self.redis.port, prefix)
        for process in (self.a, self.b):
            self.addCleanup(process.stop)
            process.start()
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def http(self, method, url, body=None):
        response = await treq.request(method, url, pool=self.pool,
                                      data=None if body is None else json.dumps(body).encode())
        return response.code, json.loads(await response.content())

    async def test_waiter_on_one_process_is_woken_through_the_other(self):
        """When a client long-polls process A and a job is enqueued through
        process B, A answers at once, well before the wait runs out."""
        started = time.monotonic()
        waiting = ensureDeferred(self.http("GET", self.a.url("/dequeue/lp/?wait=20")))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(waiting.called)
        enqueued = time.monotonic()
        code, _ = await self.http("POST", self.b.url("/enqueue/lp/q1/"),
                                  {"job_id": "j1", "interval": 0, "payload": {"n": 1}})
        self.assertEqual(code, 201)
        code, body = await waiting
        delivered = time.monotonic()
        self.assertEqual((code, body["job_id"], body["payload"]), (200, "j1", {"n": 1}))
        # subscribed, A never re-checks on its own: only the notification
        # published by B's enqueue can answer before the 20 s wait runs out
        self.assertLess(delivered - enqueued, 5)
        self.assertLess(delivered - started, 10)

    async def test_hung_up_client_does_not_take_the_job(self):
        """When a waiting client hangs up, it stops waiting: the next job
        goes to the client that came after it (first come, first served
        would give it to the older one otherwise)."""
        gone = socket.create_connection(("127.0.0.1", self.a.port))
        gone.sendall(b"GET /dequeue/lp/?wait=20 HTTP/1.1\r\nHost: a\r\n\r\n")
        await deferLater(reactor, 0.3, lambda: None)
        gone.close()
        await deferLater(reactor, 0.3, lambda: None)
        waiting = ensureDeferred(self.http("GET", self.a.url("/dequeue/lp/?wait=5")))
        await deferLater(reactor, 0.3, lambda: None)
        await self.http("POST", self.b.url("/enqueue/lp/q1/"),
                        {"job_id": "j1", "interval": 0, "payload": 1})
        code, body = await waiting
        self.assertEqual((code, body["job_id"]), (200, "j1"))
