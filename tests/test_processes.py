"""
Long-poll across sharqd processes: two `twistd -n sharq -c conf` processes
on different ports share one redis-server; a waiter on one is woken by an
enqueue through the other.
"""

import json
import shutil
import socket
import tempfile
import time

import pytest
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from support import (RedisMonitor, RedisServer, Sharqd, server_side_open,
                     unique_prefix, wait_until)

pytestmark = pytest.mark.slow


class TwoProcesses(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sharqd-procs-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        prefix = unique_prefix()
        self.a = Sharqd(self.dir, self.redis, prefix=prefix)
        self.b = Sharqd(self.dir, self.redis, prefix=prefix)
        for process in (self.a, self.b):
            self.addCleanup(process.stop)
            process.start()
            process.wait_log("Subscribed to")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        # a dequeue of type lp reaching Redis: the key base "<prefix>:{lp}"
        self.monitor = RedisMonitor(self.redis)
        self.addCleanup(self.monitor.close)
        self.lp = f"{prefix}:{{lp}}"

    async def redis_ran(self, text, count):
        """Wait (off the reactor thread) until Redis ran count commands
        mentioning text."""
        await deferToThread(self.monitor.wait_count, text, count)

    async def http(self, method, url, body=None):
        response = await treq.request(method, url, pool=self.pool,
                                      data=None if body is None else json.dumps(body).encode())
        return response.code, json.loads(await response.content())

    async def test_waiter_on_one_process_is_woken_through_the_other(self):
        """When a client long-polls process A and a job is enqueued through
        process B, A answers at once, well before the wait runs out."""
        started = time.monotonic()
        waiting = ensureDeferred(self.http("GET", self.a.url("/dequeue/lp/?wait=20")))
        await self.redis_ran(self.lp, 1)  # A looked, found nothing: it waits
        await deferLater(reactor, 0.5, lambda: None)  # and keeps waiting
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
        await self.redis_ran(self.lp, 1)  # the first client waits
        client_port = gone.getsockname()[1]
        gone.close()
        # A has seen the hang-up when it closed its end of that connection
        await wait_until(lambda: not server_side_open(self.a.port, client_port))
        waiting = ensureDeferred(self.http("GET", self.a.url("/dequeue/lp/?wait=5")))
        await self.redis_ran(self.lp, 2)  # the second client waits
        await self.http("POST", self.b.url("/enqueue/lp/q1/"),
                        {"job_id": "j1", "interval": 0, "payload": 1})
        code, body = await waiting
        self.assertEqual((code, body["job_id"]), (200, "j1"))
