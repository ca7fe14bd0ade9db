"""
The Redis layer's connections (sharqd.redis.connection): the subscription
of the long-poll on a real redis-server of its own, which the tests stop and
start again; the contract of the one txredisapi subclass.
"""

import time

import txredisapi
from twisted.internet.defer import gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sharqd.config import Config
from sharqd.errors import ConfigError, RedisUnavailable
from sharqd.queue.channels import queue_type_of, ready_pattern
from sharqd.redis.connection import RedisConnection, RedisService
from support import Recorder, RedisServer, connected_service, ready_subscription, wait_until


class Subscription(TestCase):
    timeout = 30

    async def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.recorder = Recorder()
        self.service = ready_subscription(self.redis.section(), "pfx", self.recorder,
                                          keepalive=0.5)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await wait_until(lambda: self.recorder.states == [True])

    async def publish(self, channel):
        service = await connected_service(self, self.redis.section())
        await service.execute(b"PUBLISH", channel, b"1")

    async def test_publish_reaches_the_listener(self):
        """When a ready channel of the prefix is published, the listener is
        told the queue type; other channels are ignored."""
        await self.publish("other:{sms}:ready")
        await self.publish("pfx:{sms}:ready")
        await wait_until(lambda: self.recorder.heard == ["sms"])

    async def test_subscription_comes_back_after_redis_restarts(self):
        """When Redis goes away the listener hears the subscription is down;
        when Redis is back, it is subscribed again by itself."""
        self.redis.stop()
        await wait_until(lambda: self.recorder.states == [True, False])
        self.assertFalse(self.service.live)
        self.redis.start()
        await wait_until(lambda: self.recorder.states == [True, False, True], timeout=15)
        await self.publish("pfx:{email}:ready")
        await wait_until(lambda: self.recorder.heard == ["email"])

    async def test_unix_socket(self):
        """When Redis is reached over a unix socket, the subscription works
        the same."""
        recorder = Recorder()
        service = ready_subscription(self.redis.section(unix=True), "pfx", recorder)
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(lambda: recorder.states == [True])
        await self.publish("pfx:{sms}:ready")
        await wait_until(lambda: recorder.heard == ["sms"])

    async def test_silent_redis_is_noticed_by_the_keepalive(self):
        """When Redis stops answering without closing the connection, the
        keep-alive PING notices and the subscription is reported down."""
        self.service.config = self.redis.section(timeout=0.5)
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        await wait_until(lambda: False in self.recorder.states, timeout=10)
        self.redis.resume()
        await wait_until(lambda: self.recorder.states[-1] is True, timeout=15)


class CommandPool(TestCase):
    timeout = 30

    async def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)

    async def test_refused_handshake_is_tried_again(self):
        """When Redis refuses the handshake (a password it does not know),
        the pool keeps trying, and serves once Redis accepts it."""
        service = RedisService(self.redis.section(password="s3cret", timeout=0.5),
                               poolsize=2)
        service.startService()
        self.addCleanup(service.stopService)
        with self.assertRaises(RedisUnavailable):
            await service.execute(b"PING")
        self.redis.call("CONFIG", "SET", "requirepass", "s3cret")
        self.redis.password = "s3cret"
        await wait_until(lambda: len(service.live) == 2)
        self.assertEqual(await service.execute(b"PING"), b"PONG")

    async def test_silent_redis_gives_unavailable_in_bounded_time(self):
        """When Redis stops answering (SIGSTOP), a command fails with
        RedisUnavailable within timeout + 1 s, and commands run again once
        Redis answers."""
        service = await connected_service(self, self.redis.section(timeout=0.5))
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        started = time.monotonic()
        with self.assertRaises(RedisUnavailable):
            await service.execute(b"PING")
        self.assertLess(time.monotonic() - started, 1.5)
        self.redis.resume()
        await wait_until(lambda: service.live, timeout=10)
        self.assertEqual(await service.execute(b"PING"), b"PONG")

    async def test_stopped_service_refuses_commands(self):
        """When the pool is stopped, a command fails at once with
        RedisUnavailable."""
        service = await connected_service(self, self.redis.section())
        await service.stopService()
        with self.assertRaises(RedisUnavailable):
            await service.execute(b"PING")


    async def test_command_larger_than_the_socket_takes(self):
        """When a command is larger than the socket takes at once, it reaches
        Redis whole, the commands sent behind it are answered in order, and
        once all are answered commands go straight to the socket again."""
        service = RedisService(self.redis.section(timeout=10), poolsize=1)
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(lambda: service.live)
        connection = service.live[0]
        self.assertIsNotNone(connection.writer.direct)  # a TCP socket
        big = bytes(range(256)) * (64 << 12)  # 64 MiB
        replies = [service.execute(b"SET", b"big", big),
                   service.execute(b"INCR", b"n"), service.execute(b"GET", b"n")]
        self.assertIsNone(connection.writer.direct)  # the rest waits in the transport
        self.assertEqual(await gatherResults(replies), [b"OK", 1, b"1"])
        self.assertIs(connection.writer.direct, connection.writer.socket)
        self.assertEqual(await service.execute(b"STRLEN", b"big"), len(big))
        self.assertEqual(await service.execute(b"GETRANGE", b"big", -3, -1),
                         big[-3:])


class _Link:
    """Records what a RedisConnection tells its link."""

    def __init__(self):
        self.made = []
        self.lost_ones = []

    def connected(self, connection):
        self.made.append(connection)

    def lost(self, connection):
        self.lost_ones.append(connection)


class ProtocolContract(TestCase):
    """What RedisConnection relies on in txredisapi (see its docstring):
    these fail if an upgrade of txredisapi changes it."""

    def connect(self, on_message=None):
        link = _Link()
        connection = RedisConnection(link, on_message)
        transport = StringTransport()
        connection.makeConnection(transport)
        return link, connection, transport

    def test_connection_made_is_ours(self):
        """When a connection is made, the link is told and txredisapi's
        handshake (which stops all reconnection when it fails) sends
        nothing."""
        link, connection, transport = self.connect()
        self.assertEqual(link.made, [connection])
        self.assertEqual(transport.value(), b"")

    def test_replies_arrive_in_order(self):
        """When replies of every kind arrive, split anywhere, each command's
        Deferred gets its own, bulk strings as bytes, error replies as
        ResponseError failures."""
        link, connection, transport = self.connect()
        replies = [connection.send(b"x") for _ in range(7)]
        data = (b"+OK\r\n-ERR bad\r\n$4\r\n0012\r\n$-1\r\n:42\r\n"
                b"*2\r\n$1\r\na\r\n:1\r\n$4\r\n\xff\x00ab\r\n")
        for i in range(0, len(data), 5):
            connection.dataReceived(data[i:i + 5])
        self.assertEqual(transport.value(), b"x" * 7)
        self.assertEqual(self.successResultOf(replies[0]), b"OK")
        self.assertEqual(str(self.failureResultOf(replies[1], txredisapi.ResponseError).value),
                         "ERR bad")
        self.assertEqual([self.successResultOf(d) for d in replies[2:]],
                         [b"0012", None, 42, [b"a", 1], b"\xff\x00ab"])

    def test_messages_go_to_on_message(self):
        """When a pattern message arrives on a subscription, on_message gets
        its channel and no command's reply is taken."""
        heard = []
        link, connection, transport = self.connect(heard.append)
        pong = connection.send(b"PING")
        connection.dataReceived(b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n"
                                b"$1\r\nm\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        self.assertEqual(heard, [b"c"])
        self.assertEqual(self.successResultOf(pong), [b"pong", b""])
        self.assertEqual(connection.replies, 2)

    def test_lost_connection_fails_what_is_awaited(self):
        """When the connection is lost, every awaited reply fails with
        txredisapi.ConnectionError and the link is told."""
        link, connection, transport = self.connect()
        awaited = connection.send(b"x")
        connection.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(awaited, txredisapi.ConnectionError)
        self.assertEqual(link.lost_ones, [connection])

    def test_hiredis_parses(self):
        """When hiredis is installed (a pinned dependency), txredisapi's
        protocol uses it: the fast parser."""
        self.assertTrue(issubclass(RedisConnection, txredisapi.HiredisProtocol))


class Names(TestCase):

    def test_channel_names(self):
        """When a channel name comes in, the queue type is read back from it."""
        self.assertEqual(ready_pattern("sharq_server"), "sharq_server:{*}:ready")
        self.assertEqual(queue_type_of("p", b"p:{sms}:ready"), "sms")
        self.assertIsNone(queue_type_of("p", b"q:{sms}:ready"))


class DeadLetterConfig(TestCase):

    def test_dead_letter_limit_default_and_bounds(self):
        """When dead_letter_limit is absent it is 10,000; a bad value stops
        startup with one line naming it."""
        self.assertEqual(Config.from_dict({}).sharq.dead_letter_limit, 10000)
        config = Config.from_dict({"sharq": {"dead_letter_limit": "0"}})
        self.assertEqual(config.sharq.dead_letter_limit, 0)
        for bad in ("-1", "ten", "100000000"):
            with self.assertRaises(ConfigError) as e:
                Config.from_dict({"sharq": {"dead_letter_limit": bad}}, "s.conf")
            self.assertIn("[sharq] dead_letter_limit", str(e.exception))
