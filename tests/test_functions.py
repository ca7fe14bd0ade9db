"""
The queue scripts as one Redis function library (FUNCTION LOAD / FCALL,
sharqd/redis/scripts.py Functions), on real redis-server processes: the
library is loaded by the first call that misses it and again whenever
Redis lost it, no call fails or runs twice meanwhile, a Redis or ACL
without functions falls back to EVALSHA, the function flags keep the
maxmemory behaviour, and no per-call state of one call is seen by the next.
"""

from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from sharqd.errors import RedisUnavailable, TypePaused
from sharqd.queue.lua import SCRIPT_FLAGS, library_text
from sharqd.queue.operations import LIBRARY, BatchJob, Queue
from sharqd.redis.cluster import key_slot
from sharqd.redis.scripts import Functions, Library, Script, _denied
from support import (FakeClock, RedisServer, connected_service, make_queue, resp_command,
                     shared_cluster, unique_prefix, wait_until)


async def script_stats(executes):
    """{command: (calls, rejected calls)} of the script commands, added up
    over executes (INFO commandstats)."""
    stats = {"fcall": [0, 0], "evalsha": [0, 0], "eval": [0, 0]}
    for execute in executes:
        for line in (await execute(b"INFO", b"commandstats")).decode().splitlines():
            name, _, rest = line.partition(":")
            name = name[len("cmdstat_"):]
            if name in stats:
                fields = dict(kv.split("=") for kv in rest.split(","))
                stats[name][0] += int(fields["calls"])
                stats[name][1] += int(fields.get("rejected_calls", 0))
    return stats


async def library_loaded(execute):
    return bool(await execute(b"FUNCTION", b"LIST", b"LIBRARYNAME", LIBRARY.name))


class FunctionTests(TestCase):
    """One Queue on a redis-server of its own."""

    options = ()

    async def setUp(self):
        self.redis = RedisServer(options=self.options).start()
        self.addCleanup(self.redis.cleanup)
        self.service = await connected_service(self, self.redis.section())
        self.clock = FakeClock()
        self.q = Queue(self.service.execute, unique_prefix(), 1000, clock=self.clock)
        self.events = []
        self.q.call.log = Logger(observer=self.events.append)

    def put(self, job_id, qtype="sms", queue_id="q1"):
        return self.q.enqueue(qtype, queue_id, job_id, 0, b"{}", -1)

    async def settled(self):
        """Wait until no load of the library is in flight."""
        await wait_until(lambda: self.q.call.loading is None)

    async def stats(self):
        return await script_stats([self.service.execute])

    def warnings(self):
        return [e for e in self.events if e["log_level"].name == "warn"]


class LoadingTests(FunctionTests):

    async def test_operations_run_as_functions_once_loaded(self):
        """When a Redis 7 has not seen the library, the first call runs as a
        script and loads it; from then on every operation is one FCALL."""
        await self.put("a")
        await self.settled()
        self.assertTrue(await library_loaded(self.service.execute))
        before = await self.stats()
        await self.put("b")
        job = await self.q.dequeue("sms")
        await self.q.finish("sms", job.queue_id, job.job_id, job.lease_id)
        await self.q.lock("sms", b"me", 1000)
        after = await self.stats()
        # enqueue, dequeue, its deadline's mark (due), finish, lock
        self.assertEqual(after["fcall"][0] - before["fcall"][0], 5)
        self.assertEqual(after["evalsha"], before["evalsha"])
        self.assertEqual(after["eval"], before["eval"])

    async def test_flushed_library_is_loaded_again_without_losing_a_call(self):
        """When the library is gone (FUNCTION FLUSH, as after a restart
        without persistence) while calls are in flight, each of them runs
        exactly once, and the library is loaded again."""
        await self.put("a")
        await self.settled()
        await self.service.execute(b"FUNCTION", b"FLUSH")
        lengths = await gatherResults([self.put(f"j{i}") for i in range(50)])
        self.assertEqual(sorted(lengths), list(range(2, 52)))
        await self.settled()
        self.assertTrue(await library_loaded(self.service.execute))
        taken = []
        while (job := await self.q.dequeue("sms")) is not None:
            taken.append(job.job_id)
        self.assertEqual(sorted(taken), sorted(["a"] + [f"j{i}" for i in range(50)]))
        before = await self.stats()
        await self.put("z")
        self.assertEqual((await self.stats())["fcall"][0] - before["fcall"][0], 1)
        self.assertEqual(self.warnings(), [])

    async def test_two_versions_keep_their_own_library(self):
        """When another sharqd version's library is on the same Redis (a
        rolling upgrade), both stay loaded, under names of their own, and
        this one calls its own functions."""
        scripts = [(name, shared, flags + ("no-cluster",))
                   for name, (shared, flags) in SCRIPT_FLAGS.items()]
        other_name, other_code, other_functions = library_text(scripts)
        self.assertNotEqual(other_name, LIBRARY.name)
        self.assertFalse(set(other_functions.values()) & set(LIBRARY.functions.values()))
        await self.service.execute(b"FUNCTION", b"LOAD", other_code)
        await self.put("a")
        await self.settled()
        names = [entry[1] for entry in await self.service.execute(b"FUNCTION", b"LIST")]
        self.assertEqual(sorted(names), sorted([LIBRARY.name.encode(), other_name.encode()]))
        self.assertEqual((await self.q.dequeue("sms")).job_id, "a")


class BrokenLibraryTests(FunctionTests):

    async def test_library_that_does_not_load_is_given_up(self):
        """When Redis refuses to load the library (it does not compile
        there), each call still answers, through EVALSHA, the load is not
        tried on every call, and one log line says why."""
        library = Library("sharqd_broken", b"#!lua name=sharqd_broken\nnot lua at all\n",
                          {"seven": "sharqd_broken_seven"}, {"seven": Script("seven", b"return 7")})
        call = Functions(library, lambda: [self.service.execute])
        call.log = Logger(observer=self.events.append)
        self.assertEqual(await call("seven", self.service.execute, (), ()), 7)
        await wait_until(lambda: call.loading is None)
        before = await self.stats()
        self.assertEqual([await call("seven", self.service.execute, (), ()) for _ in range(3)],
                         [7, 7, 7])
        after = await self.stats()
        self.assertEqual(after["fcall"], before["fcall"])
        self.assertEqual(after["evalsha"][0] - before["evalsha"][0], 3)
        [warning] = self.warnings()
        self.assertIn("FUNCTION LOAD failed", warning["reason"])


class MaxmemoryTests(FunctionTests):

    options = ("--maxmemory-policy", "noeviction")

    async def test_full_redis_refuses_enqueues_and_still_drains(self):
        """When Redis is full (maxmemory, noeviction), an enqueue is refused
        (503) and stores nothing, while dequeue, finish and the figures
        keep working, so workers drain it."""
        await self.put("a")
        await self.settled()
        await self.put("b", queue_id="q2")
        active = await self.q.dequeue("sms")
        before = await self.stats()
        filler = b"x" * (256 * 1024)
        for _ in range(8):
            await self.service.execute(b"APPEND", b"filler", filler)
        info = (await self.service.execute(b"INFO", b"memory")).decode()
        used = int(info.split("used_memory:", 1)[1].split("\r\n", 1)[0])
        await self.service.execute(b"CONFIG", b"SET", b"maxmemory", used - 64 * 1024)
        self.addCleanup(self.redis.call, "CONFIG", "SET", "maxmemory", "0")
        with self.assertRaises(RedisUnavailable):
            await self.put("c", queue_id="q3")
        self.assertEqual(await self.q.queue_ids("sms"), ["q1", "q2"])
        await self.q.finish("sms", active.queue_id, active.job_id, active.lease_id)
        self.assertIsNotNone(await self.q.dequeue("sms"))
        self.assertEqual((await self.q.explain("sms", "q3")).pending, 0)
        after = await self.stats()
        self.assertEqual(after["fcall"][1] - before["fcall"][1], 1)  # the enqueue, refused
        self.assertEqual(after["evalsha"], before["evalsha"])
        self.assertEqual(after["eval"], before["eval"])


class AclFallbackTests(FunctionTests):
    """A Redis whose default user may not use FCALL (or FUNCTION LOAD):
    the process falls back to EVALSHA, says so once, and works as ever."""

    denied = ("-fcall", "-function")

    async def setUp(self):
        await super().setUp()
        await self.service.execute(b"ACL", b"SETUSER", b"default", *self.denied)

    async def test_denied_functions_fall_back_to_evalsha(self):
        """When the ACL denies them, every operation works through EVALSHA,
        FCALL is tried once, and one log line says why."""
        for i in range(5):
            await self.put(f"j{i}")
        await self.settled()
        for _ in range(5):
            job = await self.q.dequeue("sms")
            await self.q.finish("sms", job.queue_id, job.job_id, job.lease_id)
        self.assertIsNone(await self.q.dequeue("sms"))
        stats = await self.stats()
        self.assertEqual(stats["fcall"][0] + stats["fcall"][1], 1)
        # 5 enqueues, 6 dequeues (the last finds none), the first deadline's mark, 5 finishes
        self.assertEqual(stats["evalsha"][0], 17)
        self.assertFalse(self.q.call.fcall)
        [warning] = self.warnings()
        self.assertIn("EVALSHA", warning["log_format"])
        self.assertIn("ACL", warning["reason"])


class AclNoLoadTests(AclFallbackTests):
    """FCALL allowed, FUNCTION LOAD denied: the library can never be there."""

    denied = ("-function",)

    async def test_denied_functions_fall_back_to_evalsha(self):
        """When FUNCTION LOAD is denied, the first call's "Function not
        found" leads to EVALSHA for good, said once in the log."""
        for i in range(5):
            await self.put(f"j{i}")
        await self.settled()
        before = await self.stats()
        await self.put("k")
        after = await self.stats()
        self.assertEqual(after["fcall"], before["fcall"])
        self.assertEqual(after["evalsha"][0] - before["evalsha"][0], 1)
        [warning] = self.warnings()
        self.assertIn("function|load", warning["reason"])


def test_redis_without_functions_is_told_apart():
    """When Redis answers FCALL with an unknown command (6.2) or an ACL
    refusal of FCALL or FUNCTION LOAD, the process stops trying functions;
    other errors (a script's own, a key the ACL denies) are no reason to."""
    assert "before 7.0" in _denied("ERR unknown command `FCALL`, with args beginning "
                                   "with: `sharqd_1_enqueue`, `1`, ")
    assert "ACL" in _denied("NOPERM this user has no permissions to run the 'fcall' command")
    assert _denied("NOPERM this user has no permissions to access one of the keys used "
                   "as arguments") is None
    assert _denied("ERR Function not found") is None
    assert _denied(None) is None


class StateTests(TestCase):
    """The library keeps its per-call names (key names, NOW, the caches of
    the type's policy and deadline bound) between calls: each call must
    set every one it uses afresh."""

    async def setUp(self):
        self.q, self.clock = await make_queue(self)

    async def put(self, job_id, qtype, queue_id="q1"):
        return await self.q.enqueue(qtype, queue_id, job_id, 0, b"{}", -1)

    async def test_paused_type_then_another(self):
        """When a paused type's dequeue comes just before another type's,
        the other type hands out its job, and the paused one still does
        not."""
        await self.put("a", "paused")
        await self.put("b", "open")
        await self.q.pause_type("paused")
        for _ in range(2):
            with self.assertRaises(TypePaused):
                await self.q.dequeue("paused")
        self.assertEqual((await self.q.dequeue("open")).job_id, "b")
        with self.assertRaises(TypePaused):
            await self.q.dequeue("paused")

    async def test_deadline_marks_are_per_type(self):
        """When two types' first jobs are dequeued one after the other,
        each type's deadline is marked in the index of due types, and a
        second dequeue of the first type marks nothing again."""
        await self.put("a", "one")
        await self.put("b", "one", queue_id="q2")
        await self.put("c", "two")
        await self.q.dequeue("one")
        await self.q.dequeue("two")
        deadline = int(self.clock() * 1000) + 1000
        self.assertEqual(await self.q.due_bounds(["one", "two"]), [deadline, deadline])
        reply = await self.q._run("dequeue", "one", 1000)
        self.assertEqual(len(reply), 6)  # no deadline bound to mark

    async def test_functions_answer_as_the_scripts_do(self):
        """When the same operations on two types run through FCALL and,
        with another prefix, through EVALSHA, every answer is the same."""
        evalsha, _ = await make_queue(self)  # its own clock, at the same time
        evalsha.call.fcall = False
        answers = [await self.script(q) for q in (self.q, evalsha)]
        self.assertEqual(answers[0], answers[1])
        stats = await script_stats(self.q.masters())
        self.assertGreater(stats["fcall"][0], 30)

    async def script(self, q):
        """A run of every kind of operation over two types; the answers."""
        out = []

        async def note(call):
            try:
                out.append(repr(await call))
            except Exception as e:
                out.append(f"{type(e).__name__}: {e}")
        for t in ("a", "b"):
            await note(q.enqueue(t, "q1", "j1", 100, b'{"n": 1}', 0))
            await note(q.enqueue(t, "q1", "j1", 100, b'{"n": 1}', 0))
            await note(q.enqueue(t, "q2", "j2", 0, b"[2]", 1, 5))
            await note(q.enqueue_many(t, [BatchJob("q3", f"m{i}", 0, b"3", -1) for i in range(3)]))
        await note(q.put_policy("a", "q3", {"rate": 2.0, "burst": 2}))
        await note(q.put_policy("b", None, {"max_active": 1}))
        await note(q.pause_type("a"))
        for t in ("a", "b", "a"):
            await note(q.dequeue(t))
            await note(q.dequeue_many(t, 3))
        await note(q.resume_type("a"))
        await note(q.dequeue_many("a", 10))
        await note(q.explain("a", "q3"))
        await note(q.explain("b", "q1"))
        await note(q.touch("b", "q1", "j1", 3000))
        await note(q.finish("b", "q1", "j1"))
        await note(q.finish("a", "q1", "j1", "wrong"))
        await note(q.set_interval("a", "q2", 50))
        q.clock.advance(2)
        for t in ("a", "b"):
            await note(q.requeue_batch(t, 100))
            await note(q.dead_letters(t))
            await note(q.queue_metrics(t, "q1"))
            await note(q.top_queues(t))
            await note(q.get_policy(t, "q3"))
        await note(q.retry_dead_letter("a", "q1", "j1"))
        await note(q.finish_many("a", [("q2", "j2"), ("q3", "m0")]))
        await note(q.delete_queue("b", "q3", purge_all=True))
        await note(q.type_stats("a"))
        await note(q.type_stats("b"))
        return out


class ClusterTests(TestCase):
    """On the shared Redis Cluster (3 masters, 3 replicas)."""

    async def test_master_without_the_library_gets_it_again(self):
        """When one master lost the library (a new or flushed node), the
        calls to its types still answer, each once, and the library is
        loaded there again; the other masters keep theirs."""
        q, _ = await make_queue(self, cluster=True)
        cluster = shared_cluster()
        flushed = cluster.masters()[0]
        types = [t for t in (f"t{i}" for i in range(60))
                 if cluster.master_of(key_slot(f"{q.prefix}:{{{t}}}")) is flushed][:5]
        self.assertEqual(len(types), 5)
        for t in types:
            await q.enqueue(t, "q1", "a", 0, b"{}", -1)
        await wait_until(lambda: q.call.loading is None)
        resp_command(flushed.port, "FUNCTION", "FLUSH")
        lengths = [await q.enqueue(t, "q1", "b", 0, b"{}", -1) for t in types]
        self.assertEqual(lengths, [2] * len(types))
        await wait_until(lambda: q.call.loading is None)
        for execute in q.masters():
            self.assertTrue(await library_loaded(execute))
        self.assertEqual([(await q.dequeue(t)).job_id for t in types], ["a"] * len(types))
