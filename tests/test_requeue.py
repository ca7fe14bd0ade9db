"""
The requeue service: its timer with task.Clock, and its passes and lock on
a real redis-server.
"""

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import TestCase

from sharqd.errors import RedisUnavailable
from sharqd.queue.operations import FORGET_AFTER, LIBRARY, SCRIPTS
from sharqd.queue.requeue import FORGET_ROUNDS, SWEEP_SECONDS, RequeueService
from support import make_queue


class ScriptedQueue:
    """Stands in for Queue in timer tests: counts passes, can fail or stall;
    no type is registered or due."""

    def __init__(self):
        self.locks = 0  # passes started
        self.sweeps = 0  # checks of every registered type
        self.fail = False
        self.stall = None

    async def due_types(self):
        self.locks += 1
        if self.fail:
            raise self.fail
        if self.stall is not None:
            await self.stall
        return []

    async def registered_types(self):
        self.sweeps += 1
        return []

    def unsure_types(self):
        return []

    async def legacy_types(self):
        return []

    async def registry_size(self):
        return 0


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

    def test_every_type_is_checked_at_start_and_after_failing_passes(self):
        """When the service starts, and when passes work again after an
        outage (a dequeue's reply may have been lost after its script ran),
        the next pass checks every registered type; other passes do not."""
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.queue.sweeps, 1)
        self.queue.fail = RedisUnavailable("Redis at x is not reachable")
        self.clock.advance(0.5)
        self.queue.fail = False
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.queue.sweeps, 2)

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


def watch_requeues(queue):
    """The list of types queue.requeue_batch is called for, in order, from
    now on."""
    order = []
    requeue = queue.requeue_batch

    async def watched(queue_type, batch):
        order.append(queue_type)
        return await requeue(queue_type, batch)
    queue.requeue_batch = watched
    return order


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
        order = watch_requeues(self.q)
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


async def script_calls(queue):
    """Script calls so far on every master (FCALL, EVALSHA and EVAL in INFO
    commandstats)."""
    calls = 0
    for execute in queue.masters():
        stats = (await execute(b"INFO", b"commandstats")).decode()
        for line in stats.splitlines():
            if line.startswith(("cmdstat_fcall:", "cmdstat_evalsha:", "cmdstat_eval:")):
                calls += int(line.split("calls=")[1].split(",")[0])
    return calls


class DueIndexTests(TestCase):
    """The index of due types (requeue.py), on a real redis-server."""
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, expire_ms=1000, cluster=self.cluster)

    async def put(self, job_id, qtype="sms", queue_id="q1"):
        await self.q.enqueue(qtype, queue_id, job_id, 0, b"{}", -1)

    def service(self):
        return RequeueService(self.q, 1000, Clock())

    async def unmarked_dequeue(self, qtype="sms", lease=1000):
        """The dequeue script alone, as if sharqd died before its mark;
        returns its reply."""
        return await self.q._run("dequeue", qtype, lease)

    def now_ms(self):
        return int(self.clock() * 1000)  # as Queue hands it to the scripts

    async def pending(self, qtype="sms", queue_id="q1"):
        return (await self.q.queue_metrics(qtype, queue_id))[0]

    async def test_pass_requeues_only_the_due_types(self):
        """When one type of many has an expired job, a pass runs the requeue
        script for that type only, and puts the job back."""
        for i in range(30):
            await self.put("idle", qtype=f"idle{i}")
        await self.put("a")
        await self.q.dequeue("sms")
        service = self.service()
        await service.run_pass()  # the first pass also checks every type
        self.clock.advance(1.001)
        order = watch_requeues(self.q)
        self.assertEqual(await service.run_pass(), 1)
        self.assertEqual(order, ["sms"])
        self.assertEqual(await self.pending(), 1)
        self.assertEqual(await self.q.due_types(), [])  # no active job left
        self.assertEqual(await service.run_pass(), 0)
        self.assertEqual(order, ["sms"])

    async def test_stream_of_a_type_without_active_jobs_goes(self):
        """When a type's last active job is finished, its next requeue pass
        drops the type's stream of active jobs (a placeholder entry and
        deleted ones), and a later dequeue starts it afresh."""
        stream = f"{self.q.prefix}:{{sms}}:activejobs"
        await self.put("a")
        await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", "a")
        self.clock.advance(1.001)
        service = self.service()
        await service.run_pass()
        self.assertEqual(await self.q.execute(b"EXISTS", stream), 0)
        await self.put("b")
        await self.q.dequeue("sms")
        entries = await self.q.execute(b"XRANGE", stream, b"-", b"+")
        self.assertEqual([entry[0] for entry in entries][:1], [b"0-1"])
        self.assertEqual(len(entries), 2)
        self.clock.advance(1.001)
        self.assertEqual(await service.run_pass(), 1)  # b comes back
        self.assertEqual(await self.pending(), 1)

    async def test_idle_types_cost_no_script_calls(self):
        """When many types are registered with pending jobs and none is
        active, a pass runs one script (the read of the due types), however
        many types there are."""
        for i in range(200):
            await self.put("idle", qtype=f"idle{i}")
        service = self.service()
        await service.run_pass()
        before = await script_calls(self.q)
        for _ in range(5):
            self.clock.advance(1)
            await service.run_pass()
        self.assertEqual(await script_calls(self.q) - before, 5)

    async def test_bound_follows_the_earliest_deadline(self):
        """When a type's first job is dequeued its deadline is marked in the
        index; later dequeues with the same lease mark nothing, and a pass
        settles the bound on the earliest deadline left."""
        await self.put("a")
        await self.put("b", queue_id="q2")
        await self.q.dequeue("sms")
        self.assertEqual(await self.q.due_bounds(["sms"]), [self.now_ms() + 1000])
        self.clock.advance(0.5)
        self.assertEqual(len(await self.unmarked_dequeue()), 6)  # no mark needed
        second = self.now_ms() + 1000
        self.clock.advance(0.501)
        await self.service().run_pass()
        self.assertEqual(await self.pending(), 1)  # a is back
        self.assertEqual(await self.q.due_bounds(["sms"]), [second])

    async def test_mark_between_read_and_settle_keeps_the_type_due(self):
        """When a dequeue marks a type after the pass read the due types but
        before it settles, the settle leaves the bound as it was (due), and
        the next pass looks at the type again."""
        await self.put("a")
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        [(queue_type, generation)] = await self.q.due_types()
        self.assertEqual(await self.q.requeue_batch("sms", 100), (1, 0, 1, None))
        job = await self.q.dequeue("sms")  # a again, marked: its type had no active job
        self.assertEqual(job.job_id, "a")
        self.assertEqual(await self.q.settle_due([("sms", generation, None)]), 0)
        self.assertEqual([t for t, _ in await self.q.due_types()], ["sms"])
        self.clock.advance(1.001)
        self.assertEqual(await self.service().run_pass(), 1)
        self.assertEqual(await self.pending(), 1)

    async def test_mark_after_settle_lowers_the_bound(self):
        """When a dequeue's script runs after the pass's requeue call and its
        mark after the settle, the settle drops the type (no active job it
        knew of) and the mark puts it back with the job's deadline."""
        await self.put("a")
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        [(_, generation)] = await self.q.due_types()
        await self.q.requeue_batch("sms", 100)
        reply = await self.unmarked_dequeue()
        self.assertEqual(await self.q.settle_due([("sms", generation, None)]), 1)
        self.assertEqual(await self.q.due_bounds(["sms"]), [None])
        await self.q.mark_due([("sms", reply[6])])
        self.assertEqual(await self.q.due_bounds(["sms"]), [self.now_ms() + 1000])
        self.clock.advance(1.001)
        self.assertEqual(await self.service().run_pass(), 1)

    async def test_unmarked_deadline_before_the_requeue_call_is_settled(self):
        """When a dequeue that did not lower the bound (the type had an
        active job) runs before the pass's requeue call, the settled bound
        is its deadline."""
        await self.put("a")
        await self.put("b", queue_id="q2")
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        [(_, generation)] = await self.q.due_types()
        self.assertEqual(len(await self.unmarked_dequeue()), 6)
        _, _, _, head = await self.q.requeue_batch("sms", 100)
        self.assertEqual(head, self.now_ms() + 1000)
        self.assertEqual(await self.q.settle_due([("sms", generation, head)]), 1)
        self.assertEqual(await self.q.due_bounds(["sms"]), [head])

    async def test_cancelled_mark_is_still_made(self):
        """When the caller of a mark gives up (a client that hung up after
        its job was taken), the mark is made all the same."""
        marked = self.q.mark_due([("sms", 1234)])
        marked.cancel()
        self.assertFailure(marked, CancelledError)
        bounds = [None]
        for _ in range(1000):  # the mark may go on another connection
            bounds = await self.q.due_bounds(["sms"])
            if bounds != [None]:
                break
        self.assertEqual(bounds, [1234])

    async def test_lost_dequeue_reply_is_checked_by_the_next_pass(self):
        """When a dequeue's script ran but its reply was lost (the
        connection dropped), the next pass checks its type, and the job
        comes back when its lease ends."""
        execute = self.q.execute

        def lossy(*command):
            d = execute(*command)
            if command[1] in (SCRIPTS["dequeue"].sha, LIBRARY.functions["dequeue"]):
                d.addCallback(lambda _: fail(RedisUnavailable("connection lost")))
            return d
        service = self.service()
        await service.run_pass()
        await self.put("a")
        self.q.execute = lossy
        with self.assertRaises(RedisUnavailable):
            await self.q.dequeue("sms")
        self.q.execute = execute
        self.assertEqual(await self.pending(), 0)
        await service.run_pass()
        self.clock.advance(1.001)
        self.assertEqual(await service.run_pass(), 1)
        self.assertEqual(await self.pending(), 1)

    async def test_start_sweep_finds_a_deadline_never_marked(self):
        """When sharqd died between a dequeue and its mark, the next sharqd's
        first pass finds the deadline and puts the job back."""
        await self.put("a")
        await self.unmarked_dequeue()
        self.clock.advance(1.001)
        self.assertEqual(await self.q.due_types(), [])
        self.assertEqual(await self.service().run_pass(), 1)
        self.assertEqual(await self.pending(), 1)

    async def test_upgrade_with_active_jobs_and_no_index(self):
        """When Redis holds active jobs of an earlier version (no index, no
        bounds), the first pass of the new version finds them; they come
        back when their leases end."""
        for i in range(3):
            await self.put(f"j{i}", qtype=f"t{i}")
            await self.unmarked_dequeue(qtype=f"t{i}")
            await self.q.execute(b"DEL", f"{self.q.prefix}:{{t{i}}}:indexed")
        service = self.service()
        self.assertEqual(await service.run_pass(), 0)
        self.assertNotIn(None, await self.q.due_bounds(["t0", "t1", "t2"]))
        self.clock.advance(1.001)
        self.assertEqual(await service.run_pass(), 3)
        for i in range(3):
            self.assertEqual(await self.pending(qtype=f"t{i}"), 1)

    async def test_rolling_sweep_finds_a_lost_mark_within_a_minute(self):
        """When a running sharqd misses a mark (it died between a dequeue and
        its mark on another process), its passes find the deadline within
        about SWEEP_SECONDS and the job comes back."""
        await self.put("a")
        service = self.service()
        await service.run_pass()
        await self.unmarked_dequeue(lease=100)
        passes = 0
        while await self.pending() == 0 and passes < SWEEP_SECONDS + 2:
            self.clock.advance(1)
            await service.run_pass()
            passes += 1
        self.assertEqual(await self.pending(), 1)
        self.assertGreater(passes, 1)  # found by the sweep, not by a mark

    async def test_idle_type_leaves_the_registry_through_the_sweep(self):
        """When a type has been idle for FORGET_AFTER, the passes' sweep of
        the registry drops it (a busy type stays), without a pass over
        every type."""
        await self.put("a")
        await self.put("b", qtype="email")
        job = await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", job.job_id)
        service = self.service()
        await service.run_pass()
        self.clock.advance(FORGET_AFTER + 1)
        passes = 0
        while ("sms" in await self.q.registered_types()
               and passes < FORGET_ROUNDS * SWEEP_SECONDS + 2):
            await service.run_pass()
            passes += 1
        self.assertEqual(await self.q.registered_types(), ["email"])
        self.assertGreater(passes, 1)


class DueIndexClusterTests(DueIndexTests):
    cluster = True
