"""
Rate policies (README "Rate policy") on a real redis-server, with the time
handed to the scripts to the millisecond: GCRA rate and burst, max_active,
paused queues and types, type defaults, explain and lease ids.
"""

import json
import math
from fractions import Fraction

from twisted.trial.unittest import TestCase

from sharqd.errors import BadRequest, Conflict, NotFound, TypePaused
from sharqd.queue.operations import Policy, Queue
from support import connected_service, shared_redis, unique_prefix

START_MS = 1_700_000_000_000


class MsClock:
    """Epoch seconds on whole milliseconds (half a millisecond in, so that
    the queue's seconds * 1000 never falls under the intended one)."""

    def __init__(self):
        self.ms = START_MS

    def __call__(self):
        return (self.ms + 0.5) / 1000

    def advance_ms(self, ms):
        self.ms += ms

    def at(self, ms):
        """Move to START_MS + ms."""
        self.ms = START_MS + ms


async def policy_queue(testcase, expire_ms=1000):
    service = await connected_service(testcase, shared_redis().section())
    clock = MsClock()
    return Queue(service.execute, unique_prefix(), expire_ms, clock=clock), clock


def gcra_releases(rate, burst, jobs):
    """When each of `jobs` jobs may go, from an idle start at 0 (ms, exact):
    the first `burst` at once, then one each 1/rate s."""
    rate = Fraction(rate)
    return [0 if k < burst else math.ceil((k - burst + 1) * 1000 / rate)
            for k in range(jobs)]


class Base(TestCase):

    async def setUp(self):
        self.q, self.clock = await policy_queue(self)

    async def fill(self, queue_id, n, interval=0, qtype="sms", prefix="j"):
        for i in range(n):
            await self.q.enqueue(qtype, queue_id, f"{prefix}{i}", interval,
                                 json.dumps({"i": i}).encode(), -1)

    async def drain(self, qtype="sms"):
        """Dequeue one by one until nothing is ready; the jobs taken."""
        taken = []
        while True:
            job = await self.q.dequeue(qtype)
            if job is None:
                return taken
            taken.append(job)

    async def in_ready_set(self, queue_id, qtype="sms"):
        score = await self.q.execute(b"ZSCORE", f"{self.q.prefix}:{{{qtype}}}:ready", queue_id)
        return score is not None


class Gcra(Base):

    async def minute(self, rate, burst, jobs, batch=None):
        """Drain at every instant a job may go (and the millisecond before)
        over a simulated minute; assert the count taken by each instant."""
        releases = gcra_releases(rate, burst, jobs)
        instants = sorted({t for r in releases for t in (r - 1, r) if 0 <= t <= 60_000}
                          | set(range(0, 60_001, 1000)))
        taken = 0
        for t in instants:
            self.clock.at(t)
            if batch:
                got, _ = await self.q.dequeue_many("sms", batch)
            else:
                got = await self.drain()
            taken += len(got)
            expected = sum(1 for r in releases if r <= t)
            self.assertEqual(taken, expected, f"at {t} ms")
        return taken

    async def test_burst_then_steady_rate_over_a_minute(self):
        """When a queue has rate 3/s and burst 5, 5 jobs go at once, then one
        each 333.3 ms: the count at each instant of a minute is the GCRA
        formula's, to the millisecond."""
        await self.q.put_policy("sms", "q1", dict(rate=3.0, burst=5))
        await self.fill("q1", 200)
        self.assertEqual(await self.minute(3, 5, 200), 5 + 180)

    async def test_fractional_rate_over_a_minute(self):
        """When a queue has rate 7.5/s and burst 3, the count at each instant
        of a minute matches the formula (no drift over 450 jobs)."""
        await self.q.put_policy("sms", "q1", dict(rate=7.5, burst=3))
        await self.fill("q1", 500)
        self.assertEqual(await self.minute(Fraction(15, 2), 3, 500), 3 + 450)

    async def test_batches_take_only_the_tokens(self):
        """When batches of 50 are dequeued, each takes only the jobs the bucket
        lets go at that instant: the counts are the formula's."""
        await self.q.put_policy("sms", "q1", dict(rate=2.0, burst=4))
        await self.fill("q1", 150)
        self.assertEqual(await self.minute(2, 4, 150, batch=50), 4 + 120)

    async def test_bucket_refills_after_idle(self):
        """When a queue idles for burst / rate seconds, a full burst goes again,
        and no more."""
        await self.q.put_policy("sms", "q1", dict(rate=10.0, burst=3))
        await self.fill("q1", 10)
        self.assertEqual(len(await self.drain()), 3)
        self.clock.advance_ms(150)  # 1.5 tokens back
        self.assertEqual(len(await self.drain()), 1)
        self.clock.advance_ms(1000)
        self.assertEqual(len(await self.drain()), 3)

    async def test_interval_is_burst_one(self):
        """When one queue has interval 250 ms and another rate 4 burst 1,
        both hand out jobs at the same instants."""
        await self.fill("plain", 20, interval=250)
        await self.fill("rated", 20, interval=0)
        await self.q.put_policy("sms", "rated", dict(rate=4.0, burst=1))
        for _ in range(40):
            got = sorted(job.queue_id for job in await self.drain())
            self.assertIn(got, ([], ["plain", "rated"]))
            self.clock.advance_ms(125)

    async def test_rate_wins_over_interval(self):
        """When a queue with interval 1000 gets rate 10, its jobs go 100 ms
        apart; dropping the policy brings the interval back."""
        await self.fill("q1", 5, interval=1000)
        await self.q.put_policy("sms", "q1", dict(rate=10.0))
        self.assertEqual(len(await self.drain()), 1)
        self.clock.advance_ms(100)
        self.assertEqual(len(await self.drain()), 1)
        await self.q.delete_policy("sms", "q1")
        self.clock.advance_ms(999)
        self.assertEqual(await self.drain(), [])
        self.clock.advance_ms(1)
        self.assertEqual(len(await self.drain()), 1)

    async def test_policy_and_bucket_outlive_an_empty_queue(self):
        """When a rated queue empties and a job comes back at once, the policy
        is still there and the bucket still spent."""
        await self.q.put_policy("sms", "q1", dict(rate=1.0, burst=2))
        await self.fill("q1", 2)
        for job in await self.drain():
            await self.q.finish("sms", job.queue_id, job.job_id)
        self.assertEqual(await self.q.get_policy("sms", "q1"), Policy(1.0, 2, None, None))
        await self.fill("q1", 1, prefix="again")
        self.assertEqual(await self.drain(), [])
        self.clock.advance_ms(1000)
        self.assertEqual(len(await self.drain()), 1)

    async def test_policy_set_before_the_queue_exists(self):
        """When a policy is put for a queue that does not exist yet, it holds
        from its first job on; dropping it leaves no key behind."""
        meta = f"{self.q.prefix}:{{sms}}:meta:q1"
        await self.q.put_policy("sms", "q1", dict(max_active=1))
        await self.fill("q1", 2)
        self.assertEqual(len(await self.drain()), 1)
        await self.q.delete_queue("sms", "q1", purge_all=True)
        self.assertEqual(await self.q.execute(b"TTL", meta), -1)  # kept: it has a policy
        self.assertTrue(await self.q.delete_policy("sms", "q1"))
        self.assertGreater(await self.q.execute(b"TTL", meta), 0)  # R1's last dequeue only
        await self.q.put_policy("sms", "never", dict(paused=True))
        await self.q.delete_policy("sms", "never")
        self.assertEqual(await self.q.execute(b"EXISTS", f"{self.q.prefix}:{{sms}}:meta:never"), 0)

    async def test_out_of_tokens_queue_waits_with_its_next_token_time(self):
        """When a queue is out of tokens, its ready time is its next token's
        and the long-poll's next_ms says so."""
        await self.q.put_policy("sms", "q1", dict(rate=4.0, burst=2))
        await self.fill("q1", 5)
        jobs, next_ms = await self.q.dequeue_many("sms", 10)
        self.assertEqual((len(jobs), next_ms), (2, 250))


class MaxActive(Base):

    async def test_cap_holds_and_finish_frees_a_slot(self):
        """When a queue has max_active 2, a third job waits until one of the
        two is finished, and the capped queue is out of the ready set."""
        await self.q.put_policy("sms", "q1", dict(max_active=2))
        await self.fill("q1", 5)
        first = await self.drain()
        self.assertEqual(len(first), 2)
        self.assertFalse(await self.in_ready_set("q1"))
        await self.q.finish("sms", "q1", first[0].job_id)
        self.assertTrue(await self.in_ready_set("q1"))
        self.assertEqual(len(await self.drain()), 1)

    async def test_expiry_frees_a_slot(self):
        """When an active job of a capped queue expires, the requeue pass
        frees its slot: the queue hands out again at once."""
        await self.q.put_policy("sms", "q1", dict(max_active=1))
        await self.fill("q1", 3)
        self.assertEqual([j.job_id for j in await self.drain()], ["j0"])
        self.clock.advance_ms(1001)
        await self.q.requeue("sms", 100)
        self.assertEqual([j.job_id for j in await self.drain()], ["j0"])

    async def test_dead_letter_frees_a_slot(self):
        """When an active job of a capped queue expires with its budget spent,
        its slot is free for the next job."""
        await self.q.put_policy("sms", "q1", dict(max_active=1))
        await self.q.enqueue("sms", "q1", "once", 0, b"{}", 0)
        await self.fill("q1", 1)
        self.assertEqual([j.job_id for j in await self.drain()], ["once"])
        self.clock.advance_ms(1001)
        self.assertEqual(await self.q.requeue("sms", 100), (0, 1, 1))
        self.assertEqual([j.job_id for j in await self.drain()], ["j0"])

    async def test_batch_takes_no_more_than_the_cap(self):
        """When a batch of 10 is asked from a queue with max_active 3 and
        rate 100 burst 5, it gets 3."""
        await self.q.put_policy("sms", "q1", dict(rate=100.0, burst=5, max_active=3))
        await self.fill("q1", 10)
        jobs, _ = await self.q.dequeue_many("sms", 10)
        self.assertEqual(len(jobs), 3)

    async def test_other_queues_are_not_held(self):
        """When one queue is at its cap, the other queues of the type still go."""
        await self.q.put_policy("sms", "q1", dict(max_active=1))
        await self.fill("q1", 3)
        await self.fill("q2", 3)
        jobs, _ = await self.q.dequeue_many("sms", 10)
        self.assertEqual(sorted(j.queue_id for j in jobs), ["q1", "q2", "q2", "q2"])


class Pause(Base):

    async def test_paused_queue_keeps_its_jobs_and_takes_new_ones(self):
        """When a queue is paused, nothing of it goes and enqueues still
        work; unpausing lets its jobs go in order."""
        await self.fill("q1", 2)
        await self.q.put_policy("sms", "q1", dict(paused=True))
        self.assertFalse(await self.in_ready_set("q1"))
        self.assertEqual(await self.q.enqueue("sms", "q1", "late", 0, b"{}", -1), 3)
        self.assertEqual(await self.drain(), [])
        await self.q.put_policy("sms", "q1", dict(paused=False))
        self.assertEqual([j.job_id for j in await self.drain()], ["j0", "j1", "late"])

    async def test_paused_type_answers_paused(self):
        """When a type is paused, dequeue and batches raise TypePaused (404),
        enqueues work, and resume hands out again."""
        await self.fill("q1", 2)
        self.assertTrue(await self.q.pause_type("sms"))
        self.assertFalse(await self.q.pause_type("sms"))
        with self.assertRaises(TypePaused) as caught:
            await self.q.dequeue("sms")
        self.assertEqual(caught.exception.status, 404)
        self.assertIn("paused", caught.exception.message)
        with self.assertRaises(TypePaused):
            await self.q.dequeue_many("sms", 5)
        await self.fill("q2", 1)
        self.assertIsNone(await self.q.dequeue("other"))  # other types go on
        self.assertTrue(await self.q.resume_type("sms"))
        self.assertEqual(len(await self.drain()), 3)


class TypeDefaults(Base):

    async def test_type_default_applies_to_queues_without_their_own(self):
        """When the type has a default max_active 1, it holds a queue without
        a policy; a queue with its own max_active 3 takes 3."""
        await self.q.put_policy("sms", None, dict(max_active=1))
        await self.q.put_policy("sms", "own", dict(max_active=3))
        await self.fill("plain", 5)
        await self.fill("own", 5)
        jobs, _ = await self.q.dequeue_many("sms", 10)
        self.assertEqual(sorted(j.queue_id for j in jobs), ["own"] * 3 + ["plain"])

    async def test_queue_fields_override_the_default_field_by_field(self):
        """When a queue following a rated type default is paused on its own,
        it keeps the type's rate once unpaused; a null removes a field."""
        await self.q.put_policy("sms", None, dict(rate=1.0, burst=2))
        await self.fill("q1", 5)
        self.assertEqual(await self.q.put_policy("sms", "q1", dict(paused=True)),
                         Policy(None, None, None, True))
        self.assertEqual(await self.drain(), [])
        self.assertEqual(await self.q.put_policy("sms", "q1", dict(max_active=9)),
                         Policy(None, None, 9, True))
        await self.q.put_policy("sms", "q1", dict(paused=None))
        e = await self.q.explain("sms", "q1")
        self.assertEqual((e.source, e.sources), ("queue", {
            "rate": "type", "max_active": "queue", "paused": None}))
        self.assertEqual(len(await self.drain()), 2)  # the type's burst
        self.clock.advance_ms(1000)
        self.assertEqual(len(await self.drain()), 1)

    async def test_burst_without_rate_changes_nothing(self):
        """When a change would leave a burst without a rate, it is refused
        (400) and the policy stays."""
        await self.q.put_policy("sms", "q1", dict(rate=2.0, burst=3))
        with self.assertRaises(BadRequest):
            await self.q.put_policy("sms", "q1", dict(rate=None))
        self.assertEqual(await self.q.get_policy("sms", "q1"), Policy(2.0, 3, None, None))

    async def test_changing_the_default_moves_waiting_queues(self):
        """When the type's default changes while queues wait, they follow it
        at once: paused ones stop, unpaused ones go."""
        await self.fill("a", 2)
        await self.fill("b", 2)
        await self.q.put_policy("sms", None, dict(paused=True))
        self.assertFalse(await self.in_ready_set("a"))
        self.assertEqual(await self.drain(), [])
        self.assertTrue(await self.q.delete_policy("sms"))
        self.assertFalse(await self.q.delete_policy("sms"))
        self.assertEqual(len(await self.drain()), 4)

    async def test_dequeue_checks_the_head_against_its_policy(self):
        """When a queue sits in the ready set under an older policy, the
        dequeue puts it in its place instead of handing out its job."""
        await self.fill("a", 2)
        await self.fill("b", 1)
        # the type default changes without the sweep (another process)
        await self.q._run("policy", "sms", b"put", b"", b"", b"", b"1", b"")
        jobs, _ = await self.q.dequeue_many("sms", 10)
        self.assertEqual(sorted(j.queue_id for j in jobs), ["a", "b"])


class Explain(Base):

    async def reason(self, queue_id="q1"):
        return (await self.q.explain("sms", queue_id)).reason

    async def test_reasons(self):
        """When a queue is empty, waiting for its interval or rate, at its
        cap, paused or its type paused, explain says so; None when ready."""
        self.assertEqual(await self.reason(), "empty")
        await self.fill("q1", 3, interval=1000)
        self.assertIsNone(await self.reason())
        await self.drain()
        self.assertEqual(await self.reason(), "interval")
        e = await self.q.explain("sms", "q1")
        self.assertEqual((e.next_ready_at, e.tokens, e.source), (START_MS + 1000, 0, "interval"))
        await self.q.put_policy("sms", "q1", dict(rate=2.0, burst=1))
        self.assertEqual(await self.reason(), "rate")
        self.assertEqual((await self.q.explain("sms", "q1")).next_ready_at, START_MS + 500)
        await self.q.put_policy("sms", "q1", dict(max_active=1))
        self.assertEqual(await self.reason(), "max_active")
        await self.q.put_policy("sms", "q1", dict(paused=True))
        self.assertEqual(await self.reason(), "paused")
        await self.q.pause_type("sms")
        self.assertEqual(await self.reason(), "type_paused")

    async def test_tokens_policy_and_source(self):
        """When a queue follows the type default, explain names it, its
        counts and the tokens left in its bucket."""
        await self.q.put_policy("sms", None, dict(rate=1.0, burst=4, max_active=10))
        await self.fill("q1", 5)
        await self.q.dequeue("sms")
        e = await self.q.explain("sms", "q1")
        self.assertEqual((e.pending, e.active, e.source, e.tokens, e.reason),
                         (4, 1, "type", 3, None))
        self.assertEqual(e.policy, Policy(1.0, 4, 10, False))


class Leases(Base):

    async def test_each_hand_out_has_a_new_lease(self):
        """When a job expires and is handed out again, the first worker's
        lease no longer finishes or touches it (409), the current one does;
        without a lease id finish works as before."""
        await self.fill("q1", 1)
        first = await self.q.dequeue("sms")
        self.clock.advance_ms(1001)
        await self.q.requeue("sms", 100)
        second = await self.q.dequeue("sms")
        self.assertNotEqual(first.lease_id, second.lease_id)
        with self.assertRaises(Conflict):
            await self.q.finish("sms", "q1", "j0", first.lease_id)
        with self.assertRaises(Conflict):
            await self.q.touch("sms", "q1", "j0", 1000, first.lease_id)
        await self.q.touch("sms", "q1", "j0", 1000, second.lease_id)
        await self.q.finish("sms", "q1", "j0", second.lease_id)
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "j0", second.lease_id)

    async def test_finish_without_lease_id_as_before(self):
        """When finish carries no lease id, any active job finishes."""
        await self.fill("q1", 1)
        await self.q.dequeue("sms")
        await self.q.finish("sms", "q1", "j0")

    async def test_batch_leases(self):
        """When a batch is dequeued, each job has a lease; a batch finish
        checks each job's lease id."""
        await self.fill("q1", 3)
        jobs, _ = await self.q.dequeue_many("sms", 3)
        self.assertTrue(all(j.lease_id for j in jobs))
        self.clock.advance_ms(1)
        await self.q.enqueue("sms", "q1", "later", 0, b"{}", -1)
        later = await self.q.dequeue("sms")
        results = await self.q.finish_many("sms", [
            ("q1", jobs[0].job_id, jobs[0].lease_id),
            ("q1", jobs[1].job_id, later.lease_id),
            ("q1", jobs[2].job_id, None)])
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], Conflict)
        self.assertIsNone(results[2])
