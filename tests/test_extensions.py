"""
The API extensions at the queue level, on a real redis-server and on a real
Redis Cluster (each class again with cluster = True): batches,
leases, dead letters and the ready notifications of the long-poll.  Time is
the fake clock handed to the scripts, as in test_queue.py.
"""

import json
import re

from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, NotFound, QueueFull
from sharqd.queue.operations import BatchJob, Queue
from support import (Recorder, all_keys, cluster_subscription, make_queue, ready_subscription, shared_redis, unique_prefix,
                     wait_until)


def payload(value):
    return json.dumps(value).encode()


def job(job_id, queue_id="q1", interval=1000, limit=-1, value=None, max_length=None):
    return BatchJob(queue_id, job_id, interval, payload(value or {"job": job_id}),
                    limit, max_length)


async def dump(queue):
    """Every key of a queue's prefix (the prefix cut off) with its value and
    whether it expires."""
    read = {b"hash": "HGETALL", b"list": "LRANGE", b"set": "SMEMBERS",
            b"zset": "ZRANGE", b"string": "GET", b"stream": "XRANGE"}
    keys = await all_keys(queue)
    state = {}
    for key in keys:
        kind = await queue.execute(b"TYPE", key)
        args = {b"list": (0, -1), b"zset": (0, -1, b"WITHSCORES"),
                b"stream": (b"-", b"+")}.get(kind, ())
        value = await queue.execute(read[kind], key, *args)
        if kind == b"hash":  # an active job's stream entry id is a time
            value = [re.sub(rb"^(\d+) \d+-\d+$", rb"\1 <entry>", v) for v in value]
        if kind in (b"hash", b"set"):
            value = sorted(value)
        if kind == b"stream":  # entry ids are times: the entries only
            value = [fields for _, fields in value]
        expires = await queue.execute(b"PTTL", key) > 0
        state[key.decode()[len(queue.prefix):]] = (kind, value, expires)
    return state


class Batches(TestCase):
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, cluster=self.cluster)

    async def ids(self, count, qtype="sms"):
        jobs, _ = await self.q.dequeue_many(qtype, count)
        return [(j.queue_id, j.job_id) for j in jobs]

    async def test_enqueue_many_stores_every_job_in_order(self):
        """When a batch is enqueued, every job is stored and later dequeued in order."""
        results = await self.q.enqueue_many("sms", [job(f"j{i}", interval=0) for i in range(5)])
        self.assertEqual(results, [1, 2, 3, 4, 5])
        self.assertEqual(await self.ids(10), [("q1", f"j{i}") for i in range(5)])

    async def test_enqueue_many_reports_each_failure_and_stores_the_rest(self):
        """When some jobs of a batch are duplicates or over max_queued_length,
        they fail one by one and the others are stored."""
        await self.q.enqueue("sms", "q1", "old", 0, b"{}", -1)
        results = await self.q.enqueue_many("sms", [
            job("old"), job("new"), job("new"), job("full", queue_id="q1", max_length=2),
            job("other", queue_id="q2")])
        self.assertIsInstance(results[0], Conflict)
        self.assertEqual(results[1], 2)
        self.assertIsInstance(results[2], Conflict)
        self.assertIsInstance(results[3], QueueFull)
        self.assertEqual(results[3].extra, {"current_queue_length": 2})
        self.assertEqual(results[4], 1)
        self.assertEqual(await self.q.queue_ids("sms"), ["q1", "q2"])

    async def test_enqueue_many_leaves_what_single_enqueues_leave(self):
        """When a batch is enqueued, Redis holds exactly what the same jobs
        enqueued one by one, in order, leave: keys, values, expiries."""
        single = Queue(self.q.execute, unique_prefix(), 1000, clock=self.clock,
                       masters=self.q.masters)
        for q in (self.q, single):  # an override that later intervals keep (R6)
            await q.enqueue("sms", "q3", "seed", 100, b"{}", -1)
            await q.set_interval("sms", "q3", 5000)
            await q.dequeue("sms")
        jobs = [job("a"), job("b", interval=250, limit=3), job("a"),
                job("c", queue_id="q2", max_length=0), job("d", queue_id="q2"),
                job("e", queue_id="q2", max_length=1), job("f", queue_id="q3"),
                job("g", interval=0, value=[1, "x"])]
        self.clock.advance(0.1)
        batch = await self.q.enqueue_many("sms", jobs)
        singles = []
        for j in jobs:
            try:
                singles.append(await single.enqueue("sms", *j))
            except (Conflict, QueueFull) as e:
                singles.append(e)
        self.assertEqual([r if type(r) is int else type(r) for r in batch],
                         [r if type(r) is int else type(r) for r in singles])
        self.assertEqual(await dump(self.q), await dump(single))

    async def test_enqueue_many_counts_enqueues(self):
        """When a batch is stored, the minute's enqueue counters grow by the
        number of stored jobs, per queue and globally."""
        await self.q.enqueue_many("sms", [job("a"), job("a"), job("b", queue_id="q2")])
        _, counts = await self.q.global_metrics()
        self.assertEqual(counts.enqueued[-1], 2)
        _, qcounts = await self.q.queue_metrics("sms", "q2")
        self.assertEqual(qcounts.enqueued[-1], 1)

    async def test_dequeue_many_takes_one_per_queue_per_interval(self):
        """When queues have an interval, one call takes at most one job of each (R1)."""
        await self.q.enqueue_many("sms", [job("a1"), job("a2"), job("b1", queue_id="q2"),
                                          job("b2", queue_id="q2")])
        self.assertEqual(await self.ids(10), [("q1", "a1"), ("q2", "b1")])
        self.assertEqual(await self.ids(10), [])
        self.clock.advance(1)
        self.assertEqual(await self.ids(10), [("q1", "a2"), ("q2", "b2")])

    async def test_dequeue_many_with_interval_zero_keeps_order(self):
        """When a queue's interval is 0, one call may take several of its jobs,
        in enqueue order (R2), after queues that were ready earlier (R3)."""
        await self.q.enqueue_many("sms", [job("x", queue_id="early")])
        self.clock.advance(0.01)
        await self.q.enqueue_many("sms", [job(f"z{i}", interval=0) for i in range(3)])
        self.assertEqual(await self.ids(3), [("early", "x"), ("q1", "z0"), ("q1", "z1")])
        self.assertEqual(await self.ids(3), [("q1", "z2")])

    async def test_dequeue_many_reports_the_next_ready_time(self):
        """When nothing is ready, dequeue_many tells how long until the
        earliest queue is; None when nothing is pending."""
        self.assertEqual(await self.q.dequeue_many("sms", 1), ([], None))
        await self.q.enqueue_many("sms", [job("a", interval=700), job("b", interval=700)])
        jobs, _ = await self.q.dequeue_many("sms", 1)
        self.assertEqual(len(jobs), 1)
        self.clock.advance(0.2)
        self.assertEqual(await self.q.dequeue_many("sms", 1), ([], 500))

    async def test_dequeue_many_lease_sets_the_deadline(self):
        """When dequeue_many is given a lease, its jobs expire after it."""
        await self.q.enqueue_many("sms", [job("a")])
        await self.q.dequeue_many("sms", 1, lease=5000)
        self.clock.advance(4.9)
        self.assertEqual(await self.q.requeue("sms", 10), (0, 0, 0))
        self.clock.advance(0.2)
        self.assertEqual(await self.q.requeue("sms", 10), (1, 0, 1))

    async def test_finish_many_answers_per_job(self):
        """When a batch of finishes mixes active and other jobs, only the
        active ones finish; the others are NotFound."""
        await self.q.enqueue_many("sms", [job("a", interval=0), job("b", interval=0)])
        await self.q.dequeue_many("sms", 1)
        results = await self.q.finish_many("sms", [("q1", "a"), ("q1", "b"), ("q1", "a")])
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], NotFound)
        self.assertIsInstance(results[2], NotFound)
        self.assertEqual(await self.ids(5), [("q1", "b")])


class Leases(TestCase):
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, expire_ms=1000, cluster=self.cluster)
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", -1)

    async def test_touch_moves_the_deadline(self):
        """When an active job is touched, it expires a lease after the touch."""
        await self.q.dequeue("sms")
        self.clock.advance(0.9)
        deadline = await self.q.touch("sms", "q1", "a", 3000)
        self.assertEqual(deadline, int(self.clock.now * 1000) + 3000)
        self.clock.advance(2.9)
        self.assertEqual(await self.q.requeue("sms", 10), (0, 0, 0))
        self.clock.advance(0.2)
        self.assertEqual(await self.q.requeue("sms", 10), (1, 0, 1))

    async def test_touch_defaults_to_job_expire_interval(self):
        """When touch has no lease, the job gets job_expire_interval again."""
        await self.q.dequeue("sms")
        self.clock.advance(0.9)
        await self.q.touch("sms", "q1", "a")
        self.clock.advance(0.9)
        self.assertEqual(await self.q.requeue("sms", 10), (0, 0, 0))

    async def test_touch_of_a_job_not_active_is_not_found(self):
        """When the job is pending, finished or unknown, touch is NotFound and
        changes nothing."""
        with self.assertRaises(NotFound):
            await self.q.touch("sms", "q1", "a", 1000)  # pending
        with self.assertRaises(NotFound):
            await self.q.touch("sms", "q1", "nope", 1000)
        await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", "a")
        with self.assertRaises(NotFound):
            await self.q.touch("sms", "q1", "a", 1000)


class DeadLetters(TestCase):
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, expire_ms=1000, cluster=self.cluster)

    async def kill(self, job_id, queue_id="q1", limit=0, value=None):
        """Enqueue a job and let it expire until its budget is spent."""
        await self.q.enqueue("sms", queue_id, job_id, 0, payload(value or {"j": job_id}),
                             limit)
        for _ in range(limit + 1):
            job = await self.q.dequeue("sms")
            self.assertEqual(job.job_id, job_id)
            self.clock.advance(1.001)
            await self.q.requeue("sms", 100)

    async def entries(self, offset=0, limit=100):
        total, entries = await self.q.dead_letters("sms", offset, limit)
        return total, [json.loads(e) for e in entries]

    async def test_spent_job_becomes_a_dead_letter(self):
        """When a job's requeue budget is spent, it moves to the dead letters
        with its payload, limit, time and reason instead of vanishing."""
        value = {"text": "héllo", "big": 2**70}
        await self.kill("a", limit=2, value=value)
        total, [entry] = await self.entries()
        self.assertEqual(total, 1)
        self.assertEqual(entry, {
            "queue_id": "q1", "job_id": "a", "requeue_limit": 2, "requeues_spent": 2,
            "interval": 0, "failed_at": int(self.clock.now * 1000),
            "reason": "requeue limit spent", "payload": value})
        self.assertEqual(await self.q.queue_ids("sms"), [])
        self.assertEqual(await self.q.dead_letter_length("sms"), 1)

    async def test_dead_letters_page_newest_first(self):
        """When several jobs died, the list pages through them newest first."""
        for job_id in ("a", "b", "c"):
            await self.kill(job_id)
        total, page = await self.entries(0, 2)
        self.assertEqual((total, [e["job_id"] for e in page]), (3, ["c", "b"]))
        _, page = await self.entries(2, 2)
        self.assertEqual([e["job_id"] for e in page], ["a"])

    async def test_dead_letters_are_capped_oldest_dropped(self):
        """When more jobs die than dead_letter_limit, the oldest are dropped."""
        self.q.dead_letter_limit = 2
        for job_id in ("a", "b", "c"):
            await self.kill(job_id)
        total, page = await self.entries()
        self.assertEqual((total, [e["job_id"] for e in page]), (2, ["c", "b"]))
        keys = await self.q.execute(b"HKEYS", f"{self.q.prefix}:{{sms}}:deadjobs")
        self.assertEqual(sorted(keys), [b"q1:b", b"q1:c"])

    async def test_retry_puts_the_job_back_with_its_original_limit(self):
        """When a dead letter is retried, the job is pending again with its
        original requeue_limit and leaves the dead letters."""
        await self.kill("a", limit=2, value={"x": 1})
        self.assertEqual(await self.q.retry_dead_letter("sms", "q1", "a"), 1)
        self.assertEqual(await self.q.dead_letter_length("sms"), 0)
        job = await self.q.dequeue("sms")
        self.assertEqual((job.job_id, job.requeues_remaining, json.loads(job.payload)),
                         ("a", 2, {"x": 1}))

    async def test_retry_of_unknown_dead_letter_is_not_found(self):
        """When the job is not a dead letter, retry is NotFound."""
        with self.assertRaises(NotFound):
            await self.q.retry_dead_letter("sms", "q1", "a")

    async def test_retry_of_a_job_id_in_use_again_is_a_conflict(self):
        """When the dead job's id is pending again, retry is a Conflict and
        the dead letter stays."""
        await self.kill("a")
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        with self.assertRaises(Conflict):
            await self.q.retry_dead_letter("sms", "q1", "a")
        self.assertEqual(await self.q.dead_letter_length("sms"), 1)

    async def test_retry_keeps_the_rate_limit(self):
        """When a dead letter is retried into a queue that waits for its
        interval, it waits too (R1)."""
        await self.q.enqueue("sms", "q1", "a", 1000, b"{}", 0)
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        await self.q.requeue("sms", 10)
        await self.q.enqueue("sms", "q1", "b", 1000, b"{}", -1)
        await self.q.dequeue("sms")
        await self.q.retry_dead_letter("sms", "q1", "a")
        self.assertIsNone(await self.q.dequeue("sms"))
        self.clock.advance(1)
        self.assertEqual((await self.q.dequeue("sms")).job_id, "a")

    async def test_delete_one_and_purge(self):
        """When one dead letter is deleted it is gone; a purge empties the list."""
        for job_id in ("a", "b", "c"):
            await self.kill(job_id)
        await self.q.delete_dead_letter("sms", "q1", "b")
        with self.assertRaises(NotFound):
            await self.q.delete_dead_letter("sms", "q1", "b")
        self.assertEqual(await self.q.purge_dead_letters("sms"), 2)
        self.assertEqual(await self.entries(), (0, []))

    async def test_dead_letters_are_counted_per_minute(self):
        """When jobs die, the minute's dead letter counters follow."""
        await self.kill("a")
        await self.kill("b", queue_id="q2")
        _, counts = await self.q.global_metrics()
        self.assertEqual(counts.dead[-1], 2)
        _, qcounts = await self.q.queue_metrics("sms", "q2")
        self.assertEqual(qcounts.dead[-1], 1)

    async def test_dead_letter_limit_zero_discards(self):
        """When dead_letter_limit is 0, spent jobs are discarded as before."""
        self.q.dead_letter_limit = 0
        await self.kill("a")
        self.assertEqual(await self.entries(), (0, []))

    async def test_original_limit_is_forgotten_with_the_job(self):
        """When a job that was requeued finishes, no trace of it is left."""
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", 3)
        await self.q.enqueue("sms", "q1", "keep", 0, b"{}", 3)
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        await self.q.requeue("sms", 10)
        await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", "a")
        fields = await self.q.execute(b"HKEYS", f"{self.q.prefix}:{{sms}}:jobs:q1")
        self.assertEqual(fields, [b"keep"])
        stream = f"{self.q.prefix}:{{sms}}:activejobs"
        # nothing but the stream's placeholder entry (0-1, no job's)
        entries = await self.q.execute(b"XRANGE", stream, b"-", b"+")
        self.assertEqual([entry[0] for entry in entries], [b"0-1"])

    async def test_dead_letter_keys_share_the_type_hash_tag(self):
        """When jobs die, every dead-letter key carries the type's hash tag."""
        await self.kill("a")
        keys = await all_keys(self.q, "*dead*")
        self.assertTrue(keys)
        for key in keys:
            self.assertTrue(key.decode().startswith(f"{self.q.prefix}:{{sms}}:"), key)


class ReadyNotifications(TestCase):
    """What the scripts PUBLISH for the long-poll waiters, heard through a
    real subscription."""

    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, cluster=self.cluster)
        self.recorder = Recorder()
        if self.cluster:
            # on a cluster node other than the one of any type used here
            self.notify = cluster_subscription(self, self.q.prefix, self.recorder)
        else:
            self.notify = ready_subscription(shared_redis().section(), self.q.prefix,
                                             self.recorder)
        self.notify.startService()
        self.addCleanup(self.notify.stopService)
        await wait_until(lambda: self.recorder.states == [True])

    async def _sync(self):
        """Publish a marker and wait for it: everything published before it
        has been heard by then."""
        # from every master: on a cluster each node's messages reach the
        # subscriber in order, but not in order with other nodes' messages
        seen = self.recorder.heard.count("marker")
        masters = self.q.masters()
        for execute in masters:
            await execute(b"PUBLISH", f"{self.q.prefix}:{{marker}}:ready", b"0")
        await wait_until(lambda: self.recorder.heard.count("marker") >= seen + len(masters))

    async def published(self, action):
        """The types notified while action ran."""
        await self._sync()
        self.recorder.heard.clear()
        await action()
        await self._sync()
        return [t for t in self.recorder.heard if t != "marker"]

    async def test_enqueue_into_idle_type_notifies(self):
        """When a job is enqueued into a type with nothing pending, its
        channel hears of it."""
        heard = await self.published(lambda: self.q.enqueue("sms", "q1", "a", 0, b"{}", -1))
        self.assertEqual(heard, ["sms"])

    async def test_enqueue_behind_a_ready_queue_is_quiet(self):
        """When the type already has a queue ready no later than the new
        job, the enqueue publishes nothing."""
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        heard = await self.published(lambda: self.q.enqueue("sms", "q1", "b", 0, b"{}", -1))
        self.assertEqual(heard, [])
        self.clock.advance(0.01)
        heard = await self.published(lambda: self.q.enqueue("sms", "q2", "c", 0, b"{}", -1))
        self.assertEqual(heard, [])

    async def test_requeue_batch_retry_and_interval_notify(self):
        """When a requeue, a batch, a dead-letter retry or an interval change
        makes the type ready earlier, its channel hears of it once."""
        await self.q.enqueue("sms", "q1", "a", 60000, b"{}", 0)
        await self.q.enqueue("sms", "q1", "b", 60000, b"{}", -1)
        await self.q.dequeue("sms")  # q1 ready again in 60 s
        heard = await self.published(lambda: self.q.set_interval("sms", "q1", 10))
        self.assertEqual(heard, ["sms"])
        self.clock.advance(0.01)
        await self.q.dequeue_many("sms", 5)  # takes b
        self.clock.advance(0.995)
        heard = await self.published(lambda: self.q.requeue("sms", 10))  # a dies
        self.assertEqual(heard, [])
        self.clock.advance(0.01)
        heard = await self.published(lambda: self.q.requeue("sms", 10))  # b comes back
        self.assertEqual(heard, ["sms"])
        await self.q.delete_queue("sms", "q1", purge_all=True)
        heard = await self.published(lambda: self.q.retry_dead_letter("sms", "q1", "a"))
        self.assertEqual(heard, ["sms"])
        heard = await self.published(lambda: self.q.enqueue_many(
            "email", [job("x"), job("y", queue_id="q2")]))
        self.assertEqual(heard, ["email"])


class BatchesCluster(Batches):
    cluster = True


class LeasesCluster(Leases):
    cluster = True


class DeadLettersCluster(DeadLetters):
    cluster = True


class ReadyNotificationsCluster(ReadyNotifications):
    cluster = True
