"""
The pub/sub subscription of the long-poll (sharqd.redis.pubsub) on a real
redis-server of its own, which the tests stop and start again.
"""

from twisted.trial.unittest import TestCase

from sharqd.config import Config
from sharqd.errors import ConfigError
from sharqd.redis.pubsub import NotifyService, channel_pattern, queue_type_of
from support import Recorder, RedisServer, connected_service, wait_until


class Subscription(TestCase):
    timeout = 30

    async def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.recorder = Recorder()
        self.service = NotifyService(self.redis.section(), "pfx", self.recorder,
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
        service = NotifyService(self.redis.section(unix=True), "pfx", recorder)
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


class Names(TestCase):

    def test_channel_names(self):
        """When a channel name comes in, the queue type is read back from it."""
        self.assertEqual(channel_pattern("sharq_server"), "sharq_server:{*}:ready")
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
