"""
Redis comes back, always: a connection whose handshake (AUTH, SELECT,
PSUBSCRIBE) gets no answer is dropped and made again with backoff, for the
command pool and the subscription alike, whatever the db and password; and
so is a connection Redis drops (CLIENT KILL).

A stalled handshake is reproduced with a loopback port that accepts and
never answers (what a client sees of a SIGSTOPped Redis after reconnecting);
then a real redis-server takes the port over.
"""

import time

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sharqd.config import RedisSection
from sharqd.redis.connection import RedisService
from support import Recorder, RedisServer, SilentListener, ready_subscription, wait_until

pytestmark = pytest.mark.slow

TIMEOUT = 0.5  # [redis] timeout of the services under test


async def answered(command, timeout=10.0):
    """The reply of command() once Redis answers it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await command()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await deferLater(reactor, 0.05, lambda: None)


class StalledHandshake:
    """The scenario, for a db and a password given by the subclasses."""
    timeout = 60
    db = 0
    password = ""

    async def setUp(self):
        self.silent = SilentListener()
        self.addCleanup(self.silent.cleanup)

    def section(self):
        return RedisSection(port=self.silent.port, db=self.db, password=self.password,
                            timeout=TIMEOUT)

    async def redis_takes_over(self, connections):
        """Once the silent port has seen `connections` connections (so
        handshakes that got no answer were tried again), a real Redis
        takes its place."""
        await wait_until(lambda: self.silent.accepted >= connections, timeout=10)
        await self.silent.close()
        self.redis = RedisServer(password=self.password or None, port=self.silent.port)
        self.redis.start()
        self.addCleanup(self.redis.cleanup)

    async def test_command_pool_comes_back(self):
        """When Redis accepts connections but does not answer the handshake,
        the command pool keeps trying; once Redis answers, commands run on
        the configured db, and again after Redis drops every connection."""
        service = RedisService(self.section(), poolsize=2)
        service.startService()
        self.addCleanup(service.stopService)
        await self.redis_takes_over(4)
        await answered(lambda: service.execute(b"SET", b"k", b"v"))
        self.assertEqual(self.redis.call("EXISTS", "k", db=self.db), b":1")
        self.assertNotEqual(self.redis.call("CLIENT", "KILL", "TYPE", "normal"), b":0")
        self.assertEqual(await answered(lambda: service.execute(b"GET", b"k")), b"v")

    async def test_subscription_comes_back(self):
        """When Redis accepts connections but does not answer the handshake,
        the subscription keeps trying; once Redis answers it is subscribed
        and hears messages, and again after Redis drops its connection."""
        recorder = Recorder()
        service = ready_subscription(self.section(), "pfx", recorder, keepalive=TIMEOUT)
        service.startService()
        self.addCleanup(service.stopService)
        await self.redis_takes_over(2)
        await wait_until(lambda: recorder.states[-1:] == [True], timeout=10)
        self.redis.call("PUBLISH", "pfx:{sms}:ready", "1")
        await wait_until(lambda: recorder.heard == ["sms"])
        self.assertEqual(self.redis.call("CLIENT", "KILL", "TYPE", "pubsub"), b":1")
        await wait_until(lambda: recorder.states[-2:] == [False, True], timeout=10)
        self.redis.call("PUBLISH", "pfx:{sms}:ready", "1")
        await wait_until(lambda: recorder.heard == ["sms", "sms"])


class Db0(StalledHandshake, TestCase):
    pass


class Db3(StalledHandshake, TestCase):
    db = 3


class Db0Password(StalledHandshake, TestCase):
    password = "s3cret"


class Db3Password(StalledHandshake, TestCase):
    db = 3
    password = "s3cret"
