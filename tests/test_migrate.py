"""
The upgrade of the Redis layout (sharqd/queue/migrate.py, migrate.lua): a
Redis holding jobs in the old layout, written by the old version's own
scripts (tests/old_layout/, main's scripts as they were), keeps every job
after the upgrade: pending, active (lease ids, spent budgets), dead
letters, an interval override, a policy, and a queue that is gone but whose
last dequeue still spaces the next one (R1).  On a real redis-server and on
a real Redis Cluster; time is the fake clock handed to the scripts.
"""

import json
import re
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, NotFound, RedisUnavailable
from sharqd.queue.migrate import LayoutGate
from sharqd.redis.scripts import Script
from support import RedisServer, Sharqd, all_keys, make_queue, resp_command, wait_for

OLD = Path(__file__).parent / "old_layout"


def old_script(name):
    return Script("old-" + name, (OLD / "common.lua").read_bytes() + b"\n"
                  + (OLD / f"{name}.lua").read_bytes())


OLD_SCRIPTS = {name: old_script(name) for name in (
    "enqueue", "dequeue", "finish", "requeue", "interval", "policy")}


def payload(job_id):
    return json.dumps({"job": job_id}).encode()


class OldSharqd:
    """The old version's scripts, called as its Queue called them."""

    def __init__(self, queue):
        self.q = queue

    def run(self, name, *args, qtype="sms"):
        now = b"%d" % int(self.q.clock() * 1000)
        base = f"{self.q.prefix}:{{{qtype}}}"
        return OLD_SCRIPTS[name](self.q.execute, (base,),
                                 (base, self.q.prefix, qtype, now) + args)

    async def enqueue(self, queue_id, job_id, interval=0, limit=-1):
        reply = await self.run("enqueue", queue_id, job_id, interval, payload(job_id),
                               limit, b"")
        assert reply[0] == 201, reply

    async def dequeue(self, lease):
        """(queue_id, job_id, lease id) of the job handed out."""
        reply = await self.run("dequeue", lease)
        return reply[0].decode(), reply[1].decode(), reply[5].decode()


OLD_KEYS = ("payload", "budget", "limit", "active", "stats")


class Upgrade(TestCase):
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, cluster=self.cluster)
        self.start = self.clock()
        old = OldSharqd(self.q)
        await self.q.execute(b"ZADD", self.q.registry, int(self.start), "sms")
        # q1: three jobs, "a" active with a long lease, its interval 60 s
        for job_id in ("a", "b", "c"):
            await old.enqueue("q1", job_id, interval=60000)
        self.a = await old.dequeue(600000)
        # q2 "x" (limit 1) expires once: requeued with its budget spent, then
        # active again; q3 "y" (limit 0) expires into the dead letters
        await old.enqueue("q2", "x", limit=1)
        await old.enqueue("q3", "y", limit=0)
        assert [(await old.dequeue(1000))[1] for _ in range(2)] == ["x", "y"]
        self.clock.advance(1.001)
        assert list(await old.run("requeue", 100, b"")) == [1, 1, 2]
        self.x = await old.dequeue(5000)
        # q6: gone after its only job, its last dequeue kept for R1
        await old.enqueue("q6", "g", interval=10000)
        self.g_at = self.clock()
        assert (await old.dequeue(600000))[1] == "g"
        assert await old.run("finish", "q6", "g", b"") == 1
        # q5: a policy of max_active 1, one job active, one held
        await old.run("policy", "put", "q5", "", "", "1", "")
        await old.enqueue("q5", "p1")
        await old.enqueue("q5", "p2")
        self.p1 = await old.dequeue(600000)
        # q4: an interval override of 5 s, two jobs pending
        await old.enqueue("q4", "o1")
        await old.enqueue("q4", "o2")
        assert await old.run("interval", "q4", 5000) == 1
        assert (self.a[1], self.x[1], self.p1[1]) == ("a", "x", "p1")
        for kind in OLD_KEYS:
            assert await all_keys(self.q, f"{{sms}}:{kind}:*"), kind

    async def upgrade(self):
        """What MigrationService does; returns the queues moved."""
        moved = 0
        for queue_type in await self.q.types_to_upgrade():
            moved += await self.q.upgrade_type(queue_type)
        await self.q.mark_layout()
        return moved

    async def drain(self, seconds, step=1.0):
        """Dequeue, advancing step s each time nothing is ready, for
        seconds: [(seconds since start, queue_id, job_id, job)]."""
        taken, until = [], self.clock() + seconds
        while self.clock() < until:
            job = await self.q.dequeue("sms")
            if job is None:
                self.clock.advance(step)
                continue
            taken.append((self.clock() - self.start, job.queue_id, job.job_id, job))
        return taken

    def of(self, taken, queue_id):
        return [t for t in taken if t[1] == queue_id]

    async def test_every_queue_moves_and_no_old_key_is_left(self):
        """When the layout is upgraded, the four queues with jobs move, and
        no key of the old layout is left but the counts of queues gone
        before, which expire on their own."""
        self.assertEqual(await self.upgrade(), 4)
        for kind in OLD_KEYS[:-1]:
            self.assertEqual(await all_keys(self.q, f"{{sms}}:{kind}:*"), [], kind)
        stats = await all_keys(self.q, "{sms}:stats:*")
        self.assertEqual({k.split(b":")[-2] for k in stats}, {b"q3", b"q6"})
        for key in stats:
            self.assertGreater(await self.q.execute(b"PTTL", key), 0)
        self.assertEqual(await self.q.queue_ids("sms"), ["q1", "q2", "q4", "q5"])

    async def test_upgrade_again_changes_nothing(self):
        """When the upgrade runs again (a second start), it moves nothing and
        finds no type to look at."""
        from test_extensions import dump
        await self.upgrade()
        before = await dump(self.q)
        self.assertEqual(await self.q.types_to_upgrade(), [])
        self.assertEqual(await self.q.upgrade_type("sms"), 0)
        self.assertEqual(await dump(self.q), before)

    async def test_crash_half_way_is_harmless(self):
        """When an upgrade stopped after one queue, the next one moves the
        others and every job is there."""
        self.assertEqual(await self.q._script("migrate", "sms", "q1"), 1)
        self.assertEqual(await self.upgrade(), 3)
        taken = await self.drain(130, step=5)
        self.assertEqual([t[2] for t in self.of(taken, "q1")], ["b", "c"])
        self.assertEqual([t[2] for t in self.of(taken, "q4")], ["o1", "o2"])

    async def test_pending_jobs_come_out_in_order_with_their_rules(self):
        """When the layout is upgraded, pending jobs come out in order with
        their payloads, spaced by their interval, the override (5 s) sticking."""
        await self.upgrade()
        taken = await self.drain(130)
        q1, q4 = self.of(taken, "q1"), self.of(taken, "q4")
        self.assertEqual([t[2] for t in q1], ["b", "c"])
        self.assertEqual([t[2] for t in q4], ["o1", "o2"])
        for _, _, job_id, job in q1 + q4:
            self.assertEqual(json.loads(job.payload), {"job": job_id})
            self.assertEqual(job.requeues_remaining, -1)
        self.assertGreaterEqual(q1[1][0] - q1[0][0], 60 - 1e-6)
        self.assertGreaterEqual(q4[1][0] - q4[0][0], 5 - 1e-6)

    async def test_active_job_finishes_with_its_old_lease(self):
        """When a job was active before the upgrade, finish checks its old
        lease id: another is 409, its own finishes it, a second finish is 404."""
        await self.upgrade()
        with self.assertRaises(Conflict):
            await self.q.finish("sms", "q1", "a", lease_id="1")
        await self.q.finish("sms", "q1", "a", lease_id=self.a[2])
        with self.assertRaises(NotFound):
            await self.q.finish("sms", "q1", "a")

    async def test_expired_active_job_goes_back_to_the_front(self):
        """When a job active before the upgrade expires, it is handed out
        again before the jobs behind it (R2, R4)."""
        await self.upgrade()
        self.clock.advance(600)
        requeued, dead, _ = await self.q.requeue("sms", 100)
        self.assertEqual((requeued, dead), (2, 1))  # "a" and "p1" back, "x" spent
        taken = await self.drain(200, step=5)
        self.assertEqual([t[2] for t in self.of(taken, "q1")], ["a", "b", "c"])

    async def test_spent_budget_dead_letters_with_its_limit(self):
        """When a job whose budget was spent before the upgrade expires, it
        becomes a dead letter with its original limit, beside the old one."""
        await self.upgrade()
        self.clock.advance(5)
        self.assertEqual(await self.q.requeue("sms", 100), (0, 1, 1))
        total, entries = await self.q.dead_letters("sms")
        entries = [json.loads(e) for e in entries]
        self.assertEqual(total, 2)
        self.assertEqual([(e["job_id"], e["requeue_limit"], e["requeues_spent"])
                          for e in entries], [("x", 1, 1), ("y", 0, 0)])
        self.assertEqual(entries[0]["payload"], {"job": "x"})
        self.assertEqual(self.of(await self.drain(10), "q2"), [])

    async def test_old_dead_letter_is_retried(self):
        """When a dead letter of the old layout is retried, its job is handed
        out again with its payload and no budget left."""
        await self.upgrade()
        self.assertEqual(await self.q.retry_dead_letter("sms", "q3", "y"), 1)
        (_, _, _, job), = self.of(await self.drain(10), "q3")
        self.assertEqual((json.loads(job.payload), job.requeues_remaining),
                         ({"job": "y"}, 0))

    async def test_policy_still_caps_active_jobs(self):
        """When a queue had max_active 1 and a job active, its next job comes
        only once that one is finished."""
        await self.upgrade()
        self.assertEqual(self.of(await self.drain(10), "q5"), [])
        await self.q.finish("sms", "q5", "p1", lease_id=self.p1[2])
        self.assertEqual([t[2] for t in self.of(await self.drain(10), "q5")], ["p2"])

    async def test_gone_queue_keeps_its_last_dequeue(self):
        """When a queue that was gone before the upgrade gets a job, it waits
        for the interval from the old last dequeue (R1)."""
        await self.upgrade()
        await self.q.enqueue("sms", "q6", "g2", 10000, payload("g2"), -1)
        (at, _, _, _), = self.of(await self.drain(20, step=0.5), "q6")
        self.assertGreaterEqual(at, self.g_at - self.start + 10)
        self.assertLess(at, self.g_at - self.start + 10.5)

    async def test_counts_of_the_minute_are_kept(self):
        """When the layout is upgraded, the counts of the last minutes of a
        queue with jobs are carried over."""
        await self.upgrade()
        _, counts = await self.q.queue_metrics("sms", "q1")
        self.assertEqual((counts.enqueued[-1], counts.dequeued[-1]), (3, 1))
        _, counts = await self.q.queue_metrics("sms", "q2")
        self.assertEqual((counts.enqueued[-1], counts.dequeued[-1]), (1, 2))


class UpgradeCluster(Upgrade):
    cluster = True


class Gate(TestCase):
    async def setUp(self):
        self.q, _ = await make_queue(self)
        self.reactor = Clock()
        self.gate = LayoutGate(self.q, self.reactor, 2.0)

    async def test_operations_wait_for_the_upgrade(self):
        """When the layout is being upgraded, an operation waits, and runs
        once it is done."""
        d = self.q.dequeue("sms")
        self.assertNoResult(d)
        self.gate.open()
        self.assertIsNone(await d)
        self.assertIsNone(self.q.gate)

    async def test_operations_answer_503_when_it_takes_too_long(self):
        """When the upgrade takes longer than an operation may wait, the
        operation fails with 503 and says why."""
        d = self.q.dequeue("sms")
        self.reactor.advance(2.0)
        with self.assertRaises(RedisUnavailable) as raised:
            await d
        self.assertIn("upgrading the Redis layout", str(raised.exception))


# ---- end to end: a real twistd process on a Redis of the old layout

def old_eval(redis, prefix, name, *args):
    script = OLD_SCRIPTS[name]
    base = f"{prefix}:{{sms}}"
    return resp_command(redis.port, "EVAL", script.source, 1, base, base, prefix, "sms", "",
                        *args)


@pytest.fixture
def old_redis():
    redis = RedisServer().start()
    yield redis
    redis.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sharqd_serves_the_old_layout_after_upgrade(tmp_path, old_redis, workers):
    """When sharqd starts on a Redis holding jobs in the old layout, it
    upgrades it before serving (workers wait for it): pending jobs come
    out, an active one finishes with its old lease id."""
    prefix = f"old{workers}"
    resp_command(old_redis.port, "ZADD", f"{prefix}:registry", 1, "sms")
    for job_id in ("a", "b", "c"):
        old_eval(old_redis, prefix, "enqueue", "u1", job_id, 0, payload(job_id), -1, "")
    active = old_eval(old_redis, prefix, "dequeue", 600000)
    old_eval(old_redis, prefix, "enqueue", "u2", "d", 0, payload("d"), 2, "")
    server = Sharqd(str(tmp_path), old_redis, prefix=prefix,
                    extra_server=f"workers : {workers}\n").start()
    try:
        server.wait_log("Redis layout upgraded: 2 queues of 1 types")
        taken = set()
        for _ in range(3):
            status, body, _ = server.request("GET", "/dequeue/sms/")
            assert status == 200, body
            assert body["payload"] == {"job": body["job_id"]}
            taken.add(body["job_id"])
        assert taken == {"b", "c", "d"}
        lease = active[5].decode()
        path = f"/finish/sms/u1/a/?lease_id={lease}"
        assert server.request("POST", "/finish/sms/u1/a/?lease_id=1")[0] == 409
        assert server.request("POST", path)[0] == 200
        keys = resp_command(old_redis.port, "KEYS", f"{prefix}:*")
        assert not [k for k in keys if re.search(rb":(payload|budget|active|limit):", k)]
        wait_for(lambda: resp_command(old_redis.port, "GET", f"{prefix}:layout") == b"2")
    finally:
        server.stop()
