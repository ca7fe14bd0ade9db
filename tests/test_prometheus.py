"""
The /prometheus exposition in memory: encoded piece by piece on the
reactor, it is byte for byte what prometheus_client writes for the whole
scrape at once; the per-request metrics counted in plain dicts expose the
same samples as prometheus_client's Counter and Histogram would.
"""

import gc
import gzip
import random
import zlib

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sharqd.queue.operations import TOTALS, TypeStats
from sharqd.web import prometheus
from sharqd.web.prometheus import (DURATION_BUCKETS, Exposition, ProcessMetrics,
                                   RequestMetrics, encode, queue_families)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def type_stats(n):
    return [TypeStats(f"type{i:04d}", i, i % 7, i % 3, i % 2, i / 10,
                      {name: i * 10 + k for k, name in enumerate(TOTALS)})
            for i in range(n)]


def process_families():
    metrics = ProcessMetrics(lambda: 3)
    for i in range(200):
        metrics.observe(f"/route{i % 5}/", 200 + i % 3, i / 1000)
    metrics.redis_error("unreachable")
    return list(metrics.collect())


class _Turns:
    """A stand-in reactor whose calls run one turn at a time, as the reactor
    runs them between its I/O (task.Clock.advance(0) runs them all at once,
    those added meanwhile too)."""

    def __init__(self):
        self.calls = []

    def callLater(self, delay, function, *args, **kwargs):
        call = _Call(function, args, kwargs)
        self.calls.append(call)
        return call

    def turn(self):
        calls, self.calls = self.calls, []
        assert calls, "nothing scheduled: the render stalled"
        for call in calls:
            if call.active():
                call.called = True
                call.func(*call.args, **call.kw)


class _Call:
    """What _Turns.callLater returns: a DelayedCall's active() and
    cancel(), and no reference back to the reactor (a task.Clock's calls
    and the clock refer to each other: cycles of their own)."""

    def __init__(self, func, args, kw):
        self.func, self.args, self.kw = func, args, kw
        self.called = self.cancelled = False

    def active(self):
        return not (self.called or self.cancelled)

    def cancel(self):
        self.cancelled = True


class _Whole:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class GzipTests(SynchronousTestCase):

    def test_a_member_goes_on_from_a_deflated_run(self):
        """When parts deflated apart are followed by others in one gzip
        member, it inflates to all the parts in order and ends there."""
        first = prometheus._Deflated()
        for _ in first.steps([b"a" * 1000, b"types\n" * 500, b""]):
            pass
        member = b"".join(prometheus.gzip_member(first, [b"head\n", b"own\n" * 300]))
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.assertEqual(inflater.decompress(member),
                         b"a" * 1000 + b"types\n" * 500 + b"head\n" + b"own\n" * 300)
        self.assertTrue(inflater.eof)
        self.assertEqual(inflater.unused_data, b"")
        empty = b"".join(prometheus.gzip_member(prometheus._Deflated(), [b"only\n"]))
        self.assertEqual(gzip.decompress(empty), b"only\n")

    def test_accept_encoding(self):
        """gzip is taken when the header names it without q=0."""
        for header, taken in (("gzip", True), ("br, gzip;q=0.5", True), ("x-gzip", True),
                              ("GZIP; q=1.0", True), ("gzip;q=0", False),
                              ("gzip; q=0.000", False), ("deflate", False), ("", False),
                              (None, False), ("identity, br", False)):
            self.assertEqual(prometheus.accepts_gzip(header), taken, header)


class PiecesTests(SynchronousTestCase):

    def test_pieces_are_the_whole_encoding(self):
        """When a scrape is encoded in pieces of any size, in the text format
        or OpenMetrics, with many types, none, or Redis down, with the
        snapshot's age or without, the body is byte for byte
        prometheus_client's encoding of all families at once."""
        own = process_families()
        for accept in ("", OPENMETRICS):
            encoder, content_type = choose_encoder(accept)
            for stats in (type_stats(300), type_stats(1), [], None):
                for age in (None, (12.5, 3.25)):
                    whole = encoder(_Whole(queue_families(stats, age) + own))
                    for size in (1, 2, 7, 16, 100000):
                        self.assertEqual(encode(stats, own, accept, size, age),
                                         (content_type, whole), (accept, size))

    def test_render_lets_the_reactor_run_in_between(self):
        """When a scrape of 1,000 types is rendered, the reactor gets control
        back many times before the answer is complete, and the answer is
        the same as encoded in one go."""
        reactor = _Turns()
        own = _Whole(process_families())  # fixed figures: compared below
        exposition = Exposition(own, reactor)
        stats = type_stats(1000)
        done = []
        Deferred.fromCoroutine(exposition.render(stats, "")).addCallback(done.append)
        turns = 0
        while not done:
            reactor.turn()
            turns += 1
        self.assertGreater(turns, 10)
        content_type, parts = done[0]
        self.assertEqual((content_type, b"".join(parts)),
                         encode(stats, own.collect(), "", 100000))

    def test_an_answer_goes_out_in_chunks_one_a_turn(self):
        """When a 700 kB answer is sent while other requests are in flight,
        it goes out in writes of about CHUNK bytes, one a turn of the
        reactor, in order and whole."""
        reactor = _Turns()
        exposition = Exposition(_Whole([]), reactor)
        exposition.in_flight = lambda: 2  # this scrape's request and another
        parts = [b"%06d\n" % i * 10 for i in range(10000)]
        writes, turns, done = [], 0, []
        Deferred.fromCoroutine(exposition.send(writes.append, parts)).addCallback(done.append)
        while not done:
            reactor.turn()
            turns += 1
        self.assertEqual(b"".join(writes), b"".join(parts))
        self.assertEqual(len(writes), -(-len(b"".join(parts)) // prometheus.CHUNK))
        self.assertGreaterEqual(turns, len(writes))
        self.assertTrue(all(len(w) < prometheus.CHUNK + 100 for w in writes))

    def test_a_render_leaves_no_garbage_for_the_collector(self):
        """When scrapes of 1,000 types are rendered one after the other
        (what each lets go of released too), the garbage collector finds
        nothing to collect: a scrape's thousands of turns, left as cycles,
        piled up and one collection over them held the reactor for 5-20 ms."""
        reactor = _Turns()
        exposition = Exposition(_Whole(process_families()), reactor)
        collected = []

        def count(phase, info):
            if phase == "stop":
                collected.append(info["collected"])
        gc.collect()
        gc.callbacks.append(count)
        self.addCleanup(gc.callbacks.remove, count)
        for stats in (type_stats(1000), type_stats(1000)[::-1], type_stats(1000)):
            done = []
            Deferred.fromCoroutine(exposition.render(stats, "")).addCallback(done.append)
            while reactor.calls:
                reactor.turn()
            self.assertTrue(done)
        gc.collect()
        self.assertGreater(len(collected), 10)
        self.assertEqual(sum(collected), 0)


class RequestMetricsTests(SynchronousTestCase):

    def test_same_samples_as_prometheus_client(self):
        """When requests are counted, the collector's families hold exactly
        the samples (names, labels, values, order) that prometheus_client's
        Counter and Histogram with the same buckets hold for them."""
        registry = CollectorRegistry()
        counter = Counter("sharqd_http_requests", "HTTP requests answered.",
                          ["route", "code"], registry=registry)
        histogram = Histogram("sharqd_http_request_duration_seconds",
                              "Time from routing a request to its answer.", ["route"],
                              buckets=DURATION_BUCKETS, registry=registry)
        metrics = RequestMetrics()
        chance = random.Random(12)
        edges = [0, 1e-6, *DURATION_BUCKETS, 61, 1000]
        for _ in range(3000):
            route = chance.choice(["/enqueue/<queue_type>/<queue_id>/", "/", "other"])
            code = chance.choice([200, 201, 404, 503])
            seconds = chance.choice(edges + [chance.random() * 3])
            counter.labels(route, str(code)).inc()
            histogram.labels(route).observe(seconds)
            metrics.observe(route, code, seconds)
        expected = list(registry.collect())
        got = metrics.collect()
        self.assertEqual([(f.name, f.documentation, f.type, f.samples) for f in got],
                         [(f.name, f.documentation, f.type, f.samples) for f in expected])

    def test_no_request_no_sample(self):
        """Before any request, both families are there with no samples."""
        self.assertEqual([(f.name, f.samples) for f in RequestMetrics().collect()],
                         [("sharqd_http_requests", []),
                          ("sharqd_http_request_duration_seconds", [])])


class ReuseTests(SynchronousTestCase):

    def render(self, exposition, reactor, stats, accept=""):
        done = []
        Deferred.fromCoroutine(exposition.render(stats, accept)).addCallback(done.append)
        while not done:
            reactor.turn()
        content_type, parts = done[0]
        return content_type, b"".join(parts)

    def test_pieces_of_the_last_scrape_are_reused_and_stay_right(self):
        """When scrapes follow each other, with figures that change or not,
        every answer is exactly the encoding of its own figures, in both
        formats."""
        reactor = _Turns()
        own = _Whole(process_families())
        exposition = Exposition(own, reactor)
        stats = type_stats(200)
        changed = stats[:50] + [TypeStats("type0050", 999, 1, 1, 1, 9.5, {})] + stats[51:]
        again = changed[:120] + [TypeStats("type0120", 5, 1, 1, 1, 0.5, {})] + changed[121:]
        for accept in ("", OPENMETRICS):
            for figures in (stats, stats, changed, changed, again, stats, None, stats[:10],
                            stats[:10]):
                self.assertEqual(self.render(exposition, reactor, figures, accept),
                                 encode(figures, own.collect(), accept, 100000))

    def test_unchanged_pieces_are_not_encoded_again(self):
        """When nothing changed since the last scrape, no piece is encoded
        again; when one type changed, one piece of each family; the pieces
        of at most KEPT_FORMATS formats are kept."""
        reactor = _Turns()
        exposition = Exposition(_Whole(process_families()), reactor)
        stats = type_stats(100)
        self.render(exposition, reactor, stats)
        encoded = []

        def counting(accept):
            encoder, content_type = choose_encoder(accept)
            return (lambda collector: encoded.append(collector) or encoder(collector),
                    content_type)
        self.patch(prometheus, "choose_encoder", counting)
        self.render(exposition, reactor, stats)
        self.assertEqual(len(encoded), 1)  # the empty one, for the end marker
        changed = stats[:50] + [TypeStats("type0050", 999, 1, 1, 1, 9.5, {})] + stats[51:]
        del encoded[:]
        self.render(exposition, reactor, changed)
        families = len(prometheus.GAUGES) + len(prometheus.COUNTERS) + 1
        # one piece a family (and the HELP/TYPE lines it leaves out), the end
        self.assertLessEqual(len(encoded), 2 * families + 1)
        for version in range(6):
            self.render(exposition, reactor, stats, f"{OPENMETRICS[:-5]}{version + 1}.0.0")
        self.assertEqual(len(exposition.encoded), prometheus.KEPT_FORMATS)


class _Queue:
    """The queue methods a scrape reads, answered by the test: one
    call per batch of two types."""

    def __init__(self, types):
        self.types = types
        self.listed = 0
        self.calls = []  # (queue_type, Deferred) not answered yet

    def known_types(self):
        self.listed += 1
        return succeed(self.types)

    def stats_batches(self, types):
        return [types[i:i + 2] for i in range(0, len(types), 2)]

    def stats_many(self, batch):
        d = Deferred()
        self.calls.append((batch, d))
        return d

    def answer_first(self):
        batch, d = self.calls.pop(0)
        d.callback([TypeStats(t, 1, 0, 0, 0, 0.0, {}) for t in batch])


class ReadTests(SynchronousTestCase):

    def test_one_call_at_a_time_when_idle(self):
        """The figures are read one script call (a batch of types) at a
        time.  While other requests are in flight the next call waits for
        them to end, or BUSY_PAUSE at the latest; the figures come back in
        the types' order."""
        clock, queue = Clock(), _Queue([f"t{i:02d}" for i in range(20)])
        exposition = Exposition(_Whole([]), clock)
        in_flight = [1]
        exposition.in_flight = lambda: in_flight[0]
        result = exposition.read_figures(queue)
        clock.advance(prometheus.BUSY_PAUSE * 0.9)
        self.assertEqual(queue.calls, [])  # busy: waits
        clock.advance(prometheus.BUSY_PAUSE * 0.1)
        self.assertEqual(len(queue.calls), 1)  # waited long enough
        queue.answer_first()
        clock.advance(0)
        self.assertEqual(queue.calls, [])
        in_flight[0] = 0
        exposition.request_ended()  # the other request ended: idle
        clock.advance(0)
        self.assertEqual(len(queue.calls), 1)
        while queue.calls:
            queue.answer_first()
            clock.advance(0)
            self.assertLessEqual(len(queue.calls), 1)
        self.assertEqual([s.queue_type for s in self.successResultOf(result).stats],
                         queue.types)

    def test_a_background_read_comes_in_bursts(self):
        """When the figures are read over a window, the calls come in bursts
        of READ_BURST calls one after the other, the bursts spread evenly
        over the window."""
        clock, queue = Clock(), _Queue([f"t{i:02d}" for i in range(20)])  # 10 calls
        exposition = Exposition(_Whole([]), clock)
        read = Deferred.fromCoroutine(exposition._read(queue, window=3.0))
        bursts = []
        while clock.getDelayedCalls():
            clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
            calls = 0
            while queue.calls:
                queue.answer_first()
                calls += 1
            bursts.append((clock.seconds(), calls))
        self.assertEqual(prometheus.READ_BURST, 4)
        self.assertEqual(bursts, [(1.0, 4), (2.0, 4), (3.0, 2)])
        self.assertEqual(len(self.successResultOf(read).stats), 20)

    def test_a_turn_after_a_request_lets_the_reactor_send_first(self):
        """When the last other request ends, the scrape's next turn comes
        after the reactor has looked at its sockets once (a timed call
        later), so what the request wrote goes out first."""
        reactor = _Turns()
        exposition = Exposition(_Whole([]), reactor)
        in_flight = [1]
        exposition.in_flight = lambda: in_flight[0]
        turns = []
        exposition.turn().addCallback(turns.append)
        in_flight[0] = 0
        exposition.request_ended()
        reactor.turn()
        self.assertEqual(turns, [])
        reactor.turn()
        self.assertEqual(turns, [None])

    def test_scrapes_at_the_same_time_share_one_read(self):
        """When a scrape comes while another one's read runs, both get the
        figures of the one read."""
        clock, queue = Clock(), _Queue(["a", "b", "c"])
        exposition = Exposition(_Whole([]), clock)
        first, second = exposition.read_figures(queue), exposition.read_figures(queue)
        clock.advance(0)
        while queue.calls:
            queue.answer_first()
            clock.advance(0)
        self.assertEqual(queue.listed, 1)
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
