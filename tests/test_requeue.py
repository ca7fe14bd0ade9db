"""
The requeue service: its timer with task.Clock, and its passes and lock on
a real redis-server.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import TestCase

from sharqd.errors import RedisUnavailable
from sharqd.queue.requeue import RequeueService
from support import make_queue


class ScriptedQueue:
    """Stands in for Queue in timer tests: counts passes, can fail or stall."""

    def __init__(self):
        self.locks = 0  # passes started
        self.fail = False
        self.stall = None

    async def registered_types(self):
        self.locks += 1
        if self.fail:
            raise self.fail
        if self.stall is not None:
            await self.stall
        return []

    async def forget_if_idle(self, queue_type):
        return False


class TimerTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.queue = ScriptedQueue()
        self.service = RequeueService(self.queue, 500, self.clock)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_pass_every_interval(self):
        """When job_requeue_interval is 500 ms, a pass runs every 500 ms."""
        self.clock.advance(0.499)
        self.assertEqual(self.queue.locks, 0)
        self.clock.advance(0.001)
        self.assertEqual(self.queue.locks, 1)
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.queue.locks, 3)

    def test_failing_pass_is_logged_and_timer_goes_on(self):
        """When a pass fails with an unexpected error, the failure is logged
        and the next pass still runs."""
        self.queue.fail = ValueError("bug")
        self.clock.advance(0.5)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.queue.fail = False
        self.clock.advance(0.5)
        self.assertEqual(self.queue.locks, 2)

    def test_redis_outage_is_one_line_down_and_one_back(self):
        """When Redis is down for many passes, the log says so once, without
        a traceback, and once more when passes work again."""
        events = []
        self.service.log = Logger(observer=events.append)
        self.queue.fail = RedisUnavailable("Redis at x is not reachable")
        for _ in range(10):
            self.clock.advance(0.5)
        self.assertEqual(self.queue.locks, 10)
        self.queue.fail = False
        for _ in range(3):
            self.clock.advance(0.5)
        lines = [(e["log_level"], formatEvent(e)) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0][0], LogLevel.warn)
        self.assertIn("Redis at x is not reachable", lines[0][1])
        self.assertEqual(lines[1], (LogLevel.info, "Requeue passes work again"))
        self.assertFalse(any("log_failure" in e for e in events))

    def test_slow_pass_is_not_overlapped(self):
        """When a pass is still running at the next tick, that tick is skipped."""
        self.queue.stall = Deferred()
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.queue.locks, 1)
        self.queue.stall.callback(None)
        self.queue.stall = None
        self.clock.advance(0.5)
        self.assertEqual(self.queue.locks, 2)

    def test_stop_stops_the_timer(self):
        """When the service stops, no further pass runs."""
        self.service.stopService()
        self.clock.advance(5)
        self.assertEqual(self.queue.locks, 0)


class PassTests(TestCase):
    async def setUp(self):
        self.q, self.clock = await make_queue(self, expire_ms=1000)

    async def fill_active(self, n, qtype="sms"):
        for i in range(n):
            await self.q.enqueue(qtype, f"q{i % 50}", f"j{i}", 0, b"{}", -1)
        for _ in range(n):
            await self.q.dequeue(qtype)

    async def test_pass_requeues_everything_in_batches(self):
        """When more jobs expired than a batch holds, one pass puts back all of
        them, across types."""
        await self.fill_active(120)
        await self.fill_active(30, qtype="email")
        self.clock.advance(2)
        service = RequeueService(self.q, 1000, Clock(), batch=50)
        self.assertEqual(await service.run_pass(), 150)
        self.assertEqual(await service.run_pass(), 0)
        self.assertIsNotNone(await self.q.dequeue("sms"))

    async def test_lock_lets_one_process_pass_a_type_at_a_time(self):
        """When another sharqd holds a type's requeue lock, this one skips
        that type and passes the others; once the holder releases it, this
        one passes it too."""
        await self.fill_active(5)
        await self.fill_active(3, qtype="email")
        self.clock.advance(2)
        holder = RequeueService(self.q, 1000, Clock())
        other = RequeueService(self.q, 1000, Clock())
        self.assertTrue(await self.q.lock("sms", holder.token, 10000))
        self.assertEqual(await other.run_pass(), 3)
        self.assertTrue(await self.q.unlock("sms", holder.token))
        self.assertFalse(await self.q.unlock("sms", holder.token))
        self.assertEqual(await other.run_pass(), 5)

    async def test_busy_type_does_not_hold_up_another(self):
        """When one type has many expired jobs, every type gets a batch in
        the pass's first round."""
        await self.fill_active(120)
        await self.fill_active(3, qtype="email")
        self.clock.advance(2)
        service = RequeueService(self.q, 1000, Clock(), batch=10)
        order = []
        requeue = self.q.requeue

        async def watched(queue_type, batch):
            order.append(queue_type)
            return await requeue(queue_type, batch)
        self.q.requeue = watched
        self.assertEqual(await service.run_pass(), 123)
        self.assertEqual(sorted(order[:2]), ["email", "sms"])

    async def test_idle_type_leaves_the_registry(self):
        """When a type has had no job for 11 minutes and was not registered
        for FORGET_AFTER, it leaves the registry; a type with jobs stays."""
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        await self.q.enqueue("email", "q1", "b", 0, b"{}", -1)
        job = await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", job.job_id)
        self.assertEqual(await self.q.registered_types(), ["email", "sms"])
        self.clock.advance(5)
        self.assertFalse(await self.q.forget_if_idle("sms"))  # registered lately
        self.clock.advance(901)
        self.assertTrue(await self.q.forget_if_idle("sms"))
        self.assertFalse(await self.q.forget_if_idle("email"))
        self.assertEqual(await self.q.registered_types(), ["email"])
        await self.q.enqueue("sms", "q1", "c", 0, b"{}", -1)
        self.assertEqual(await self.q.registered_types(), ["email", "sms"])
