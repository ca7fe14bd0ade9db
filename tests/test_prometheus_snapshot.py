"""
The queue figures of /prometheus come from a snapshot read in the background
between scrapes: a scrape answers from the last one and starts the next
read, its calls spread over a window (paced by a task.Clock here), on a real
redis-server.
"""

import gzip
import json

from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from sharqd.queue.operations import Queue
from sharqd.web import prometheus
from sharqd.web.prometheus import Exposition, ProcessMetrics
from support import (FakeClock, RedisServer, connected_service, make_queue,
                     unique_prefix, wait_until)

SMS = frozenset({("queue_type", "sms")})


def samples(body):
    """{(name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


class _Counted:
    """A Queue whose Redis reads for the figures are counted."""

    def __init__(self, queue):
        self.queue = queue
        self.reads = 0

    def __getattr__(self, name):
        return getattr(self.queue, name)

    def known_types(self):
        self.reads += 1
        return self.queue.known_types()

    def stats_many(self, batch):
        self.reads += 1
        return self.queue.stats_many(batch)


class _Scrapes(TestCase):
    """An Exposition on the real reactor (its turns), its snapshot paced by
    a task.Clock, over a counted Queue."""

    def expose(self, q):
        self.queue = _Counted(q)
        self.clock = Clock()
        self.clock.advance(1000)
        self.exposition = Exposition(ProcessMetrics(), reactor, clock=self.clock)
        # a background read a test leaves runs to its end before Redis closes
        self.addCleanup(lambda: Deferred.fromCoroutine(self.run_refresh()))

    async def enqueue(self, job_id, qtype="sms"):
        await self.queue.enqueue(qtype, "u1", job_id, 0, json.dumps({}).encode(), -1)

    async def scrape(self, fresh=False):
        _, parts = await self.exposition.scrape(self.queue, "", fresh)
        body = b"".join(parts)
        return samples(body)

    async def waiting_on_clock(self):
        """Wait until the background read waits for the clock, or ended."""
        await wait_until(lambda: not self.exposition.refreshing
                         or self.clock.getDelayedCalls())

    async def run_refresh(self):
        """Advance the clock through a background read, from one paced call
        to the next, the reactor carrying its Redis calls in between; the
        clock seconds it took."""
        start = self.clock.seconds()
        while True:
            await self.waiting_on_clock()
            if not self.exposition.refreshing:
                return self.clock.seconds() - start
            call = min(self.clock.getDelayedCalls(), key=lambda c: c.getTime())
            self.clock.advance(call.getTime() - self.clock.seconds())


class SnapshotTests(_Scrapes):

    async def setUp(self):
        self.expose((await make_queue(self))[0])

    async def test_first_scrape_is_current(self):
        """When the first scrape comes, the figures are read at once: they
        are current, their age is 0, and no background read starts."""
        await self.enqueue("a")
        await self.enqueue("b")
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)
        self.assertEqual(found[("sharqd_redis_figures_age_seconds", frozenset())], 0)
        self.assertEqual(found[("sharqd_redis_up", frozenset())], 1)
        self.assertFalse(self.exposition.refreshing)

    async def test_a_scrape_shows_the_snapshot_and_the_next_the_new_figures(self):
        """When the figures change between two scrapes, the second shows the
        old ones with their age and reads the new ones in the background,
        its calls in bursts spread evenly over 3/4 of the time between the
        scrapes; the third shows the new ones."""
        for qtype in ("sms", "mail", "push"):
            await self.enqueue("a", qtype)
        await self.scrape()
        await self.enqueue("b")
        self.clock.advance(8)
        reads = self.queue.reads
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 1)
        self.assertEqual(found[("sharqd_redis_figures_age_seconds", frozenset())], 8)
        # the types' names are read, then the burst of the 2 calls (2 types
        # a call, up to READ_BURST calls a burst) waits the whole 6 s
        await self.waiting_on_clock()
        self.assertEqual(self.queue.reads - reads, 1)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 0.75 * 8)
        self.assertEqual(await self.run_refresh(), 0.75 * 8)
        self.assertEqual(self.queue.reads - reads, 3)
        self.clock.advance(2)
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)
        self.assertEqual(found[("sharqd_redis_figures_age_seconds", frozenset())], 8)
        self.assertEqual(found[("sharqd_redis_figures_read_seconds", frozenset())], 6)

    async def test_a_scrape_after_a_background_read_finds_it_encoded(self):
        """When a background read has ended, the next scrape shows its
        figures without encoding any queue family again: they were encoded
        as the read ended, in the format of the scrapes before."""
        for qtype in ("sms", "mail", "push"):
            await self.enqueue("a", qtype)
        await self.scrape()
        await self.enqueue("b")
        self.clock.advance(8)
        await self.scrape()
        await self.run_refresh()
        encoded = []

        def counting(accept):
            encoder, content_type = choose_encoder(accept)

            def encode(collector):
                encoded.extend(f.name for f in collector.collect())
                return encoder(collector)
            return encode, content_type
        self.patch(prometheus, "choose_encoder", counting)
        self.clock.advance(2)
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)
        self.assertTrue(encoded)  # this process's figures, the snapshot's age
        self.assertEqual([n for n in encoded if n.startswith(("sharqd_jobs", "sharqd_queues",
                                                              "sharqd_dead", "sharqd_oldest",
                                                              "sharqd_enqueue"))], [])

    async def test_scrapes_of_one_snapshot_send_its_figures_as_encoded(self):
        """When two scrapes show the same snapshot, the second sends the
        figures by type the first encoded, without going over the types
        again, and both show the same figures."""
        self.exposition.refresh_every = 10
        for qtype in ("sms", "mail", "push"):
            await self.enqueue("a", qtype)
        first = await self.scrape()
        walks = []
        columns = prometheus._type_columns
        self.patch(prometheus, "_type_columns",
                   lambda *args: walks.append(args) or columns(*args))
        self.clock.advance(2)
        second = await self.scrape()
        self.assertEqual(walks, [])
        self.assertEqual({k: v for k, v in second.items() if k[0].startswith("sharqd_jobs")},
                         {k: v for k, v in first.items() if k[0].startswith("sharqd_jobs")})
        self.assertEqual(second[("sharqd_redis_figures_age_seconds", frozenset())], 2)

    async def test_gzip_deflates_the_figures_by_type_once_a_snapshot(self):
        """When scrapes that take gzip show the same snapshot, its figures
        by type are deflated for the first only."""
        self.exposition.refresh_every = 10
        for qtype in ("sms", "mail", "push"):
            await self.enqueue("a", qtype)
        runs = []
        steps = prometheus._Deflated.steps
        self.patch(prometheus._Deflated, "steps",
                   lambda deflated, parts: runs.append(len(parts)) or steps(deflated, parts))
        for _ in range(3):
            _, parts = await self.exposition.scrape(self.queue, "", gzip=True)
            found = samples(gzip.decompress(b"".join(parts)))
            self.assertEqual(found[("sharqd_jobs_pending", SMS)], 1)
            self.clock.advance(2)
        self.assertEqual(len(runs), 1)

    async def test_fresh_is_current(self):
        """When a scrape asks for fresh figures, they are read at once,
        without a background read."""
        await self.enqueue("a")
        await self.scrape()
        await self.enqueue("b")
        self.clock.advance(8)
        found = await self.scrape(fresh=True)
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)
        self.assertEqual(found[("sharqd_redis_figures_age_seconds", frozenset())], 0)
        self.assertFalse(self.exposition.refreshing)

    async def test_a_stale_snapshot_is_read_again_at_once(self):
        """When the scraper stopped for longer than STALE_AFTER, the next
        scrape reads at once."""
        await self.enqueue("a")
        await self.scrape()
        await self.enqueue("b")
        self.clock.advance(prometheus.STALE_AFTER + 1)
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)
        self.assertFalse(self.exposition.refreshing)

    async def test_a_late_scrape_keeps_the_pace_of_those_before(self):
        """When scrapes come every 4 s and then one comes 20 s late, the
        read it starts is spread over 3/4 of 4 s, not of 24 s (a snapshot
        as old as the scrapes' pace, not as the pause)."""
        await self.enqueue("a")
        await self.scrape()
        self.clock.advance(4)
        for _ in range(3):
            await self.scrape()
            self.assertEqual(await self.run_refresh(), 0.75 * 4)
            self.clock.advance(4 - 0.75 * 4)  # the next scrape 4 s after this one
        self.clock.advance(20)
        await self.scrape()
        self.assertEqual(await self.run_refresh(), 0.75 * 4)

    async def test_no_read_before_the_snapshot_is_refresh_every_old(self):
        """When scrapes come every 2 s and refresh_every is 10 s, the
        scrapes show the snapshot read at the first one until it is 10 s
        old, with no read meanwhile; the scrape at 10 s starts the read
        the one after it shows."""
        self.exposition.refresh_every = 10
        await self.enqueue("a")
        await self.scrape()
        reads = self.queue.reads
        await self.enqueue("b")
        for _ in range(4):
            self.clock.advance(2)
            found = await self.scrape()
            self.assertEqual(found[("sharqd_jobs_pending", SMS)], 1)
            self.assertFalse(self.exposition.refreshing)
        self.assertEqual(self.queue.reads, reads)
        self.clock.advance(2)
        await self.scrape()
        self.assertTrue(self.exposition.refreshing)
        await self.run_refresh()
        self.assertGreater(self.queue.reads, reads)
        self.clock.advance(2)
        found = await self.scrape()
        self.assertEqual(found[("sharqd_jobs_pending", SMS)], 2)

    async def test_no_read_without_scrapes(self):
        """When no scrape comes, nothing reads Redis and no timer waits."""
        await self.enqueue("a")
        await self.scrape()
        self.clock.advance(10)
        await self.scrape()
        await self.run_refresh()
        reads = self.queue.reads
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        await deferLater(reactor, 0.05)  # a moment for anything left to show
        self.assertEqual(self.queue.reads, reads)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RedisGoneTests(_Scrapes):

    async def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        service = await connected_service(self, self.redis.section(timeout=1.0))
        self.expose(Queue(service.execute, unique_prefix(), 1000, clock=FakeClock()))

    async def test_a_background_read_ends_when_redis_goes_away(self):
        """When Redis goes away during a background read, the read ends,
        scrapes answer sharqd_redis_up 0 without the queue figures, and
        once Redis is back (empty: no persistence) a scrape reads at once."""
        await self.enqueue("a")
        await self.scrape()
        self.clock.advance(8)
        await self.scrape()
        self.assertTrue(self.exposition.refreshing)
        self.redis.stop()
        await self.run_refresh()
        self.assertIsNone(self.exposition.snapshot)
        found = await self.scrape()
        self.assertEqual(found[("sharqd_redis_up", frozenset())], 0)
        self.assertNotIn(("sharqd_jobs_pending", SMS), found)
        self.redis.start()
        up = []

        async def scrape_until_up():
            while not up:
                found = await self.scrape()
                if found[("sharqd_redis_up", frozenset())] == 1:
                    up.append(found)
                else:
                    await deferLater(reactor, 0.1)
        await wait_until_done(scrape_until_up(), 15)
        self.assertNotIn(("sharqd_jobs_pending", SMS), up[0])
        self.assertIn(("sharqd_redis_figures_age_seconds", frozenset()), up[0])
        self.assertFalse(self.exposition.refreshing)


async def wait_until_done(coroutine, timeout):
    """The coroutine's result; it fails with TimeoutError after timeout
    seconds."""
    d = Deferred.fromCoroutine(coroutine)
    d.addTimeout(timeout, reactor)
    return await d
