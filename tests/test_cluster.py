"""
sharqd on a real Redis Cluster (3 masters, 3 replicas on loopback, started
by the tests): slot routing, types spread over the masters, MOVED, and a
slot migrated while jobs of its type flow.  The queue rules themselves run
on the cluster in test_queue.py and test_extensions.py (cluster = True).
"""

import json
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, RedisUnavailable
from sharqd.queue.operations import BatchJob, Queue
from sharqd.redis.cluster import command_key, key_slot
from support import (FakeClock, connected_cluster, connected_service, resp_command,
                     shared_cluster, shared_redis, unique_prefix, wait_until)


class Routing(TestCase):

    def test_key_slot_is_the_one_redis_computes(self):
        """When a key has a hash tag, an empty tag or none, its slot is the
        one CLUSTER KEYSLOT answers."""
        port = shared_cluster().nodes[0].port
        for key in ["foo", "123456789", "{user1000}.following", "{user1000}.followers",
                    "foo{}{bar}", "foo{{bar}}zap", "{}", "p:{sms}:ready", "é{x}"]:
            self.assertEqual(key_slot(key), resp_command(port, "CLUSTER", "KEYSLOT", key),
                             key)

    def test_scripts_route_by_their_first_key(self):
        """When a command is a script, it routes by its first declared key;
        other commands by their first argument; PING by none."""
        self.assertEqual(command_key((b"EVALSHA", b"sha", 1, b"p:{t}", b"arg")), b"p:{t}")
        self.assertEqual(command_key((b"FCALL", b"fn", 1, b"p:{t}", b"arg")), b"p:{t}")
        self.assertIsNone(command_key((b"FUNCTION", b"LOAD", b"#!lua name=x")))
        self.assertIsNone(command_key((b"EVAL", b"src", 0, b"arg")))
        self.assertEqual(command_key((b"ZADD", b"p:registry", 1, b"t")), b"p:registry")
        self.assertIsNone(command_key((b"PING",)))


class OnTheCluster(TestCase):

    async def setUp(self):
        self.cluster = shared_cluster()
        self.service = await connected_cluster(self, self.cluster.section())
        self.clock = FakeClock()
        self.q = Queue(self.service.execute, unique_prefix(), 1000, clock=self.clock,
                       masters=self.service.masters)

    async def test_twenty_types_spread_over_every_master(self):
        """When 20 queue types are used, each master holds the keys of some
        of them, and every type is served."""
        types = [f"type{i}" for i in range(20)]
        for t in types:
            await self.q.enqueue(t, "q1", "a", 0, b'{"n": 1}', -1)
        holders = {}
        for master in self.cluster.masters():
            keys = resp_command(master.port, "KEYS", f"{self.q.prefix}:{{*}}:*")
            holders[master.port] = {k.decode().split("{")[1].split("}")[0] for k in keys}
        self.assertEqual(len(holders), 3)
        for port, held in holders.items():
            self.assertTrue(held, f"master {port} holds no type")
        self.assertEqual(set().union(*holders.values()), set(types))
        self.assertEqual(await self.q.queue_types(), sorted(types))
        _, counts = await self.q.global_metrics()
        self.assertEqual(counts.enqueued[-1], 20)
        for t in types:
            job = await self.q.dequeue(t)
            self.assertEqual(job.job_id, "a")
            await self.q.finish(t, "q1", "a")

    async def test_a_wrong_slot_map_is_corrected_by_moved(self):
        """When the client's map sends a type to the wrong master, Redis
        answers MOVED: the command still succeeds and the map is right."""
        slot = key_slot(f"{self.q.prefix}:{{sms}}")
        right = self.service.slots[slot]
        wrong = next(a for a in set(self.service.slots) if a != right)
        self.service.slots[slot] = wrong
        await self.q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        self.assertEqual(self.service.slots[slot], right)
        self.assertEqual((await self.q.dequeue("sms")).job_id, "a")

    async def test_slot_migrated_while_jobs_flow(self):
        """When the slot of a busy type moves to another master (MIGRATING/
        IMPORTING, MIGRATE 10 keys at a time) while jobs are enqueued,
        dequeued and finished, no acknowledged job is lost, the only errors
        are 503s, and the type is served from its new master afterwards."""
        self.q.clock = None  # Redis time: the load runs in real time
        qtype = "busy"
        slot = key_slot(f"{self.q.prefix}:{{{qtype}}}")
        for i in range(200):  # something to migrate
            await self.q.enqueue(qtype, f"q{i % 20}", f"seed{i}", 0, b"{}", -1)
        target = next(m for m in self.cluster.masters()
                      if m is not self.cluster.master_of(slot))
        acked, delivered, unavailable = set(), set(), [0]
        migration = None
        i = after = 0
        while after < 50:  # 50 rounds before, during, 50 after
            i += 1
            if i == 50:
                migration = deferToThread(self.cluster.move_slot, slot, target,
                                          step=5, pause=0.05)
            if migration is not None and migration.called:
                after += 1
            try:
                await self.q.enqueue(qtype, f"q{i % 20}", f"j{i}", 0,
                                     json.dumps(i).encode(), -1)
                acked.add(f"j{i}")
                job = await self.q.dequeue(qtype)
                if job is not None:
                    delivered.add(job.job_id)
                    await self.q.finish(qtype, job.queue_id, job.job_id)
            except RedisUnavailable:
                unavailable[0] += 1
        source, moved = await migration
        self.assertGreater(moved, 0)
        while True:  # drain
            job = await self.q.dequeue(qtype)
            if job is None:
                break
            delivered.add(job.job_id)
        self.assertEqual(acked - delivered, set())
        self.assertEqual(self.service.slots[slot], ("127.0.0.1", target.port))
        self.assertEqual(resp_command(source.port, "CLUSTER", "COUNTKEYSINSLOT", slot), 0)
        self.assertGreater(resp_command(target.port, "CLUSTER", "COUNTKEYSINSLOT", slot), 0)
        print(f"\nmigrated {moved} keys; {len(acked)} jobs acknowledged before, during "
              f"and after the migration, all delivered; {unavailable[0]} answers were 503")

    async def test_ping_asks_every_master(self):
        """When every master answers, ping answers PONG."""
        self.assertEqual(await self.q.ping(), b"PONG")
        self.assertEqual(len(self.q.masters()), 3)


class SlotMapParsing(TestCase):

    def test_shards_and_slots_give_the_same_map(self):
        """When the map is read with CLUSTER SHARDS or CLUSTER SLOTS (Redis
        before 7), the slot ranges and nodes are the same."""
        from sharqd.redis.cluster import parse_shards, parse_slots
        port = shared_cluster().nodes[0].port
        shards = parse_shards(resp_command(port, "CLUSTER", "SHARDS"), "127.0.0.1")
        slots = parse_slots(resp_command(port, "CLUSTER", "SLOTS"), "127.0.0.1")
        def per_slot(ranges):
            owner = {}
            for (start, end), address in ranges.items():
                owner.update((slot, address) for slot in range(start, end + 1))
            return owner
        self.assertEqual(per_slot(shards[0]), per_slot(slots[0]))
        self.assertEqual(len(per_slot(shards[0])), 16384)
        self.assertEqual(len(set(shards[0].values())), 3)
        self.assertLessEqual(slots[1], shards[1])

    def test_a_node_without_its_own_address_is_the_host_asked(self):
        """When a node gives an empty host (a cluster of one), the map uses
        the host the command went to."""
        from sharqd.redis.cluster import parse_slots
        reply = [[0, 16383, [b"", 7000, b"id"]]]
        self.assertEqual(parse_slots(reply, "10.0.0.5"),
                         ({(0, 16383): ("10.0.0.5", 7000)}, {("10.0.0.5", 7000)}))


class Durability(TestCase):
    """[redis] wait_replicas: WAIT after enqueues and finishes."""

    async def test_no_replica_in_time_answers_503_and_keeps_the_job(self):
        """When no replica confirms within wait_timeout (a Redis without
        replicas), the enqueue raises RedisUnavailable saying so, again when
        retried while no replica has it; the job is stored on the master."""
        section = shared_redis().section(wait_replicas=1, wait_timeout=50)
        service = await connected_service(self, section)
        q = Queue(service.execute, unique_prefix(), durable=service.execute_durable)
        with self.assertRaises(RedisUnavailable) as caught:
            await q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        self.assertIn("only 0 of 1 replicas confirmed it within 50 ms", caught.exception.message)
        with self.assertRaises(RedisUnavailable):
            await q.enqueue("sms", "q1", "a", 0, b"{}", -1)
        plain = Queue(service.execute, q.prefix)
        with self.assertRaises(Conflict):
            await plain.enqueue("sms", "q1", "a", 0, b"{}", -1)
        self.assertEqual((await plain.dequeue("sms")).job_id, "a")

    async def test_replica_confirms_on_the_cluster(self):
        """When every master has a replica, enqueue and finish with
        wait_replicas = 1 answer as usual."""
        service = await connected_cluster(
            self, shared_cluster().section(wait_replicas=1, wait_timeout=2000))
        q = Queue(service.execute, unique_prefix(), masters=service.masters,
                  durable=service.execute_durable)
        for t in ("sms", "email", "push"):
            self.assertEqual(await q.enqueue(t, "q1", "a", 0, b"{}", -1), 1)
            job = await q.dequeue(t)
            await q.finish(t, "q1", job.job_id)
        results = await q.enqueue_many("sms", [BatchJob("q1", "b", 0, b"{}", -1)])
        self.assertEqual(results, [1])


class SlowNode(TestCase):

    async def test_a_hung_master_answers_503_in_bounded_time_others_serve(self):
        """When one master stops answering (SIGSTOP, shorter than the
        cluster's node timeout), its types answer RedisUnavailable within
        [redis] timeout + 1 s, while types of the other masters are served."""
        cluster = shared_cluster()
        service = await connected_cluster(self, cluster.section(timeout=0.5))
        q = Queue(service.execute, unique_prefix(), masters=service.masters)
        hung = cluster.master_of(key_slot(f"{q.prefix}:{{sms}}"))
        other = next(t for t in (f"t{i}" for i in range(100))
                     if cluster.master_of(key_slot(f"{q.prefix}:{{{t}}}")) is not hung)
        await q.enqueue("sms", "q1", "warm", 0, b"{}", -1)  # registered, scripts loaded
        await q.enqueue(other, "q1", "warm", 0, b"{}", -1)
        hung.pause()
        try:
            started = time.monotonic()
            with self.assertRaises(RedisUnavailable):
                await q.enqueue("sms", "q1", "a", 0, b"{}", -1)
            self.assertLess(time.monotonic() - started, 1.5)
            self.assertEqual(await q.enqueue(other, "q1", "b", 0, b"{}", -1), 2)
        finally:
            hung.resume()
        await wait_until(lambda: all(p.live for p in service.pools.values()))
        # served again; "a" may be stored or not: its command reached the
        # hung Redis, which ran it when it woke (a 503 says "not known")
        self.assertIn(await q.enqueue("sms", "q1", "c", 0, b"{}", -1), (2, 3))
