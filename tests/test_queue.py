"""
The queue rules R1-R9 of SPEC.md, on a real redis-server (TCP and unix
socket) and on a real Redis Cluster (3 masters, 3 replicas).  Time is a fake clock handed to the scripts, so rate limits are
checked to the millisecond without sleeping.
"""

import json

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, NotFound, QueueFull
from sharqd.queue.operations import Queue
from support import all_keys, connected_service, make_queue, shared_redis, unique_prefix


def payload(value):
    return json.dumps(value).encode()


class QueueRulesTCP(TestCase):
    unix = False
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, unix=self.unix, expire_ms=1000,
                                              cluster=self.cluster)

    async def put(self, job_id, queue_id="q1", interval=1000, limit=-1, qtype="sms",
                  value=None, max_length=None):
        return await self.q.enqueue(qtype, queue_id, job_id, interval,
                                    payload(value or {"job": job_id}), limit, max_length)

    async def take(self, qtype="sms"):
        job = await self.q.dequeue(qtype)
        return None if job is None else job.job_id

    async def expire_and_requeue(self, qtype="sms"):
        self.clock.advance(1.001)
        return await self.q.requeue(qtype, 100)

    # ---- basics

    async def test_dequeue_returns_payload_exactly(self):
        """When a job is enqueued, dequeue hands back its payload byte for byte."""
        value = {"text": "héllo", "n": [1, 2.5, None, True], "big": 2**70}
        await self.put("j1", value=value)
        job = await self.q.dequeue("sms")
        self.assertEqual((job.queue_id, job.job_id), ("q1", "j1"))
        self.assertEqual(json.loads(job.payload), value)
        self.assertEqual(job.requeues_remaining, -1)
        self.assertEqual(job.current_queue_length, 0)

    async def test_empty_type_dequeues_nothing(self):
        """When a type has no queue, dequeue answers None."""
        self.assertIsNone(await self.q.dequeue("sms"))

    # ---- R1 rate limit

    async def test_r1_interval_spaces_dequeues(self):
        """When a queue has interval 1000, the next dequeue waits exactly 1000 ms."""
        await self.put("j1")
        await self.put("j2")
        self.assertEqual(await self.take(), "j1")
        self.assertIsNone(await self.take())
        self.clock.advance(0.999)
        self.assertIsNone(await self.take())
        self.clock.advance(0.001)
        self.assertEqual(await self.take(), "j2")

    async def test_r1_holds_across_idle_period(self):
        """When a job arrives in an empty queue 200 ms after its last dequeue,
        it becomes ready 800 ms later."""
        await self.put("j1")
        self.assertEqual(await self.take(), "j1")
        await self.q.finish("sms", "q1", "j1")
        self.clock.advance(0.2)
        await self.put("j2")
        self.clock.advance(0.799)
        self.assertIsNone(await self.take())
        self.clock.advance(0.001)
        self.assertEqual(await self.take(), "j2")

    async def test_r1_holds_after_queue_disappears_with_override(self):
        """When a queue with an interval override disappears and comes back,
        the interval in force at its last dequeue still spaces the next one."""
        await self.put("j1", interval=100)
        await self.q.set_interval("sms", "q1", 5000)
        self.assertEqual(await self.take(), "j1")
        await self.q.finish("sms", "q1", "j1")
        await self.put("j2", interval=100)
        self.clock.advance(4.9)
        self.assertIsNone(await self.take())
        self.clock.advance(0.1)
        self.assertEqual(await self.take(), "j2")

    async def test_r1_with_redis_clock(self):
        """When no clock is injected, the Redis server's clock spaces dequeues."""
        service = await connected_service(self, shared_redis().section(unix=self.unix))
        q = Queue(service.execute, unique_prefix())
        for job_id in ("a", "b"):
            await q.enqueue("sms", "q1", job_id, 300, b"{}", -1)
        self.assertEqual((await q.dequeue("sms")).job_id, "a")
        self.assertIsNone(await q.dequeue("sms"))
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        await deferLater(reactor, 0.35, lambda: None)
        self.assertEqual((await q.dequeue("sms")).job_id, "b")

    # ---- R2 order

    async def test_r2_jobs_leave_in_enqueue_order(self):
        """When several jobs wait in one queue, they are handed out in enqueue order."""
        for job_id in ("a", "b", "c"):
            await self.put(job_id, interval=0)
        self.assertEqual([await self.take() for _ in range(3)], ["a", "b", "c"])

    async def test_r2_expired_job_goes_to_front(self):
        """When an active job expires, it is handed out before the jobs behind it."""
        for job_id in ("a", "b"):
            await self.put(job_id, interval=0)
        self.assertEqual(await self.take(), "a")
        self.assertEqual(await self.expire_and_requeue(), (1, 0, 1))
        self.assertEqual(await self.take(), "a")
        self.assertEqual(await self.take(), "b")

    async def test_r2_several_expired_jobs_keep_their_order(self):
        """When several jobs of a queue expire together, they come back in
        their original order, ahead of the pending ones."""
        for job_id in ("a", "b", "c"):
            await self.put(job_id, interval=0)
        self.assertEqual(await self.take(), "a")
        self.clock.advance(0.01)
        self.assertEqual(await self.take(), "b")
        await self.expire_and_requeue()
        self.assertEqual([await self.take() for _ in range(3)], ["a", "b", "c"])

    # ---- R3 pick

    async def test_r3_earliest_ready_queue_first(self):
        """When several queues are ready, the one ready longest goes first."""
        await self.put("late", queue_id="q2", interval=0)
        self.clock.advance(0.1)
        await self.put("early", queue_id="q1", interval=0)
        self.assertEqual(await self.take(), "late")
        self.assertEqual(await self.take(), "early")

    async def test_r3_queue_not_ready_is_skipped(self):
        """When one queue waits for its interval, another ready queue is served."""
        await self.put("a1", queue_id="a", interval=10000)
        await self.put("a2", queue_id="a", interval=10000)
        self.assertEqual(await self.take(), "a1")
        await self.put("b1", queue_id="b", interval=10000)
        self.assertEqual(await self.take(), "b1")
        self.assertIsNone(await self.take())

    async def test_r3_types_are_separate(self):
        """When jobs wait in another type, dequeue of this type does not see them."""
        await self.put("j1", qtype="email")
        self.assertIsNone(await self.take("sms"))
        self.assertEqual(await self.take("email"), "j1")

    # ---- R4 expiry

    async def test_r4_unfinished_job_comes_back(self):
        """When a job is not finished within job_expire_interval, the requeue
        pass puts it back; before that it stays active."""
        await self.put("j1")
        await self.take()
        self.clock.advance(0.999)
        self.assertEqual(await self.q.requeue("sms", 100), (0, 0, 0))
        self.clock.advance(0.002)
        self.assertEqual(await self.q.requeue("sms", 100), (1, 0, 1))
        self.clock.advance(1)  # the queue's interval
        self.assertEqual(await self.take(), "j1")

    async def test_r4_requeue_works_in_batches(self):
        """When more jobs expired than one batch holds, each call takes one batch."""
        for i in range(7):
            await self.put(f"j{i}", queue_id=f"q{i}")
            await self.take()
        self.clock.advance(2)
        self.assertEqual(await self.q.requeue("sms", 5), (5, 0, 5))
        self.assertEqual(await self.q.requeue("sms", 5), (2, 0, 2))
        self.assertEqual(len([await self.take() for _ in range(7)]), 7)

    async def test_r4_lease_sets_the_deadline(self):
        """When dequeue is given a lease, the job's deadline follows it."""
        await self.put("j1")
        await self.q.dequeue("sms", lease=5000)
        self.clock.advance(4.9)
        self.assertEqual(await self.q.requeue("sms", 10), (0, 0, 0))
        self.clock.advance(0.2)
        self.assertEqual(await self.q.requeue("sms", 10), (1, 0, 1))

    # ---- R5 budget

    async def test_r5_budget_counts_down_then_job_is_discarded(self):
        """When requeue_limit is 1, the job comes back once, then is discarded."""
        await self.put("j1", limit=1, interval=0)
        self.assertEqual((await self.q.dequeue("sms")).requeues_remaining, 1)
        await self.expire_and_requeue()
        self.assertEqual((await self.q.dequeue("sms")).requeues_remaining, 0)
        self.assertEqual(await self.expire_and_requeue(), (0, 1, 1))
        self.assertIsNone(await self.take())
        self.assertEqual(await self.q.queue_ids("sms"), [])
        await self.put("j1", limit=0)  # gone: its id may be used again

    async def test_r5_minus_one_requeues_forever(self):
        """When requeue_limit is -1, the job keeps coming back."""
        await self.put("j1", limit=-1, interval=0)
        for _ in range(5):
            self.assertEqual((await self.q.dequeue("sms")).requeues_remaining, -1)
            await self.expire_and_requeue()
        self.assertEqual(await self.take(), "j1")

    # ---- R6 interval

    async def test_r6_enqueue_sets_interval(self):
        """When a later enqueue carries another interval, it replaces the old one."""
        await self.put("a", interval=10000)
        await self.put("b", interval=10000)
        await self.put("c", interval=100)
        await self.take()
        self.clock.advance(0.1)
        self.assertEqual(await self.take(), "b")

    async def test_r6_override_sticks_and_applies_at_once(self):
        """When /interval sets an interval, later enqueues don't change it and
        the next ready time is recomputed from the last dequeue at once."""
        await self.put("a", interval=10000)
        await self.put("b", interval=10000)
        await self.take()
        await self.q.set_interval("sms", "q1", 300)
        await self.put("c", interval=10000)
        self.clock.advance(0.299)
        self.assertIsNone(await self.take())
        self.clock.advance(0.001)
        self.assertEqual(await self.take(), "b")
        self.clock.advance(0.3)
        self.assertEqual(await self.take(), "c")

    async def test_r6_override_ends_with_the_queue(self):
        """When a queue disappears, its override ends: the next enqueue's
        interval applies again."""
        await self.put("a", interval=100)
        await self.q.set_interval("sms", "q1", 50)
        await self.take()
        await self.q.finish("sms", "q1", "a")
        self.clock.advance(3)
        for job_id in ("b", "c"):
            await self.put(job_id, interval=2000)
        self.assertEqual(await self.take(), "b")
        self.clock.advance(1.999)
        self.assertIsNone(await self.take())
        self.clock.advance(0.001)
        self.assertEqual(await self.take(), "c")

    async def test_r6_interval_of_unknown_queue(self):
        """When the queue does not exist, setting its interval is NotFound."""
        with self.assertRaises(NotFound):
            await self.q.set_interval("sms", "nope", 100)

    # ---- R7 finish

    async def test_r7_finish_only_active_jobs(self):
        """When a job is finished twice, unknown, or pending, finish is NotFound."""
        await self.put("j1", interval=0)
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "j1")  # pending
        await self.take()
        await self.q.finish("sms", "q1", "j1")
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "j1")  # finished
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "never")

    async def test_r7_finish_after_requeue_is_refused(self):
        """When a job expired and was requeued, a late finish changes nothing."""
        await self.put("j1", interval=0)
        await self.take()
        await self.expire_and_requeue()
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "j1")
        self.assertEqual(await self.take(), "j1")

    # ---- R8 duplicates

    async def test_r8_duplicate_pending_or_active_is_refused(self):
        """When a job id is pending or active in the queue, enqueueing it again
        is a Conflict and stores nothing; once finished it may be reused."""
        await self.put("j1", interval=0)
        with self.assertRaises(Conflict):
            await self.put("j1", value={"second": True})
        job = await self.q.dequeue("sms")
        self.assertEqual(json.loads(job.payload), {"job": "j1"})
        with self.assertRaises(Conflict):
            await self.put("j1")
        self.assertIsNone(await self.take())
        await self.q.finish("sms", "q1", "j1")
        await self.put("j1")

    async def test_r8_same_id_in_other_queue_is_fine(self):
        """When the same job id is used in another queue, both are kept."""
        await self.put("j1", queue_id="a")
        await self.put("j1", queue_id="b")
        self.assertEqual(await self.q.queue_ids("sms"), ["a", "b"])

    # ---- R9 atomic limits

    async def test_r9_max_queued_length_is_atomic(self):
        """When many enqueues race for a queue limited to 5, exactly 5 win."""
        results = await DeferredList([
            ensureDeferred(self.put(f"j{i}", max_length=5)) for i in range(20)],
            consumeErrors=True)
        won = [ok for ok, _ in results if ok]
        full = [r for ok, r in results if not ok and r.check(QueueFull)]
        self.assertEqual((len(won), len(full)), (5, 15))
        self.assertEqual(full[0].value.extra, {"current_queue_length": 5})

    async def test_r9_max_queued_length_counts_pending_only(self):
        """When jobs are active, they do not count against max_queued_length."""
        await self.put("a", max_length=1, interval=0)
        await self.take()
        self.assertEqual(await self.put("b", max_length=1), 1)

    # ---- delete, metrics, scripts

    async def test_delete_queue_drops_pending_keeps_active(self):
        """When a queue is deleted, its pending jobs go; active ones stay unless purged."""
        for job_id in ("a", "b", "c"):
            await self.put(job_id, interval=0)
        await self.take()
        await self.q.delete_queue("sms", "q1")
        self.assertIsNone(await self.take())
        self.assertEqual(await self.q.queue_ids("sms"), ["q1"])
        await self.q.delete_queue("sms", "q1", purge_all=True)
        self.assertEqual(await self.q.queue_ids("sms"), [])
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "a")
        with self.assertRaises(NotFound):
            await self.q.delete_queue("sms", "q1")
        self.assertEqual(await all_keys(self.q, "{sms}:pending:*"), [])
        stream = f"{self.q.prefix}:{{sms}}:activejobs"
        # nothing but the stream's placeholder entry (0-1, no job's)
        entries = await self.q.execute(b"XRANGE", stream, b"-", b"+")
        self.assertEqual([entry[0] for entry in entries], [b"0-1"])

    async def test_purge_all_ends_the_override(self):
        """When a queue is purged, its interval override is gone with it."""
        await self.put("a", interval=0)
        await self.q.set_interval("sms", "q1", 60000)
        await self.q.delete_queue("sms", "q1", purge_all=True)
        await self.put("b", interval=0)
        await self.put("c", interval=0)
        self.assertEqual([await self.take(), await self.take()], ["b", "c"])

    async def test_metrics_count_enqueues_and_dequeues_per_minute(self):
        """When jobs move, the minute's counters, types, ids and length follow;
        requeues are not counted as enqueues."""
        await self.put("a", interval=0)
        await self.put("b", interval=0)
        await self.take()
        await self.expire_and_requeue()
        types, counts = await self.q.global_metrics()
        self.assertIn("sms", types)
        self.assertEqual(len(counts.minutes), 10)
        self.assertEqual(counts.minutes[-1] % 60000, 0)
        self.assertEqual((counts.enqueued[-1], counts.dequeued[-1]), (2, 1))
        length, qcounts = await self.q.queue_metrics("sms", "q1")
        self.assertEqual((length, qcounts.enqueued[-1], qcounts.dequeued[-1]), (2, 2, 1))
        self.clock.advance(60)
        _, later = await self.q.global_metrics()
        self.assertEqual((later.enqueued[-1], later.enqueued[-2]), (0, 2))

    async def test_scripts_reload_after_script_flush(self):
        """When Redis forgets the scripts (restart, SCRIPT FLUSH), calls still work."""
        await self.put("a")
        for execute in self.q.masters():
            await execute(b"SCRIPT", b"FLUSH")
        self.assertEqual(await self.take(), "a")

    async def test_keys_of_a_type_share_one_hash_tag(self):
        """When a type is used, all its keys carry the type's hash tag; the
        rest are the documented global keys (the registry, and the index of
        due types in a slot of its own)."""
        await self.put("a")
        await self.put("b", qtype="email")
        await self.take()
        await self.q.lock("sms", b"t", 1000)
        keys = [k.decode() for k in await all_keys(self.q)]
        for key in keys:
            rest = key[len(self.q.prefix) + 1:]
            self.assertTrue(rest.startswith(("{sms}:", "{email}:", "{due}:"))
                            or rest == "registry", key)


class QueueRulesUnixSocket(QueueRulesTCP):
    unix = True


class QueueRulesCluster(QueueRulesTCP):
    cluster = True


class QueueIdPaging(TestCase):
    """The queue ids of a type, read page by page (GET /metrics/<type>/)."""

    async def setUp(self):
        self.q, _ = await make_queue(self)

    async def fill(self, n):
        from sharqd.queue.operations import BatchJob
        for start in range(0, n, 1000):
            await self.q.enqueue_many("sms", [
                BatchJob(f"q{k}", "j", 0, b"{}", -1)
                for k in range(start, min(n, start + 1000))])

    async def test_pages_cover_every_queue_once(self):
        """When 3,000 queues are read 700 at a time, the pages hold each
        queue exactly once and every page tells the total."""
        await self.fill(3000)
        seen = []
        for offset in range(0, 3500, 700):
            total, ids = await self.q.queue_id_page("sms", offset, 700)
            self.assertEqual(total, 3000)
            self.assertEqual(len(ids), min(700, 3000 - offset))
            seen.extend(ids)
        self.assertEqual(sorted(seen), sorted(f"q{k}" for k in range(3000)))

    async def test_page_past_the_end_is_empty(self):
        """When the offset is past the last queue, the page is empty."""
        await self.fill(10)
        self.assertEqual(await self.q.queue_id_page("sms", 10, 5), (10, []))
        self.assertEqual(await self.q.queue_id_page("other", 0, 5), (0, []))
