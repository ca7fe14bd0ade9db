"""
GET /prometheus: the queues' figures, from a snapshot of Redis refreshed in
the background between scrapes (Exposition.figures), and each sharqd
process's own metrics, in prometheus_client's exposition format.

With `workers > 1` every process keeps its own metrics and serves them on a
unix socket of its own in a folder the parent made; the process that takes
the scrape reads the others' and adds all of them, each sample labelled with
its `worker` number.  No Redis here: the queue figures come as TypeStats
from the queue layer.
"""

import gc
import glob
import os
import shutil
import struct
import time
import zlib
from bisect import bisect_left
from collections import deque
from functools import partial

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge,
                               PlatformCollector, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.task import Cooperator, deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from sharqd.errors import RedisUnavailable
from sharqd.queue.shared import SharedRead

# the *_created samples double the size of a scrape for little use
disable_created_metrics()

PEER_TIMEOUT = 1.0  # seconds a scrape waits for another worker's metrics
# A scrape does its work in turns taken while sharqd has nothing else to
# do (Exposition.turn): once no other request is in flight, and after the
# reactor has sent what it was asked to (answers, Redis commands), so no
# request waits behind the scrape for more than one turn; while requests
# keep coming, a turn every BUSY_PAUSE seconds at least.  A turn is one
# Redis call of the read (a batch of types, Queue.stats_batches: one call
# in flight at a time), or a slice of the encoding: pieces of at most
# PIECE samples (~5 µs a sample) for at most SLICE_SECONDS, whether or
# not a request came meanwhile: one piece a slice while requests were in
# flight made a GET take 30-odd turns among the enqueues, whose trips
# round the reactor cost those enqueues more than the pieces did
# (bench/scrape.py: 2.3-2.5 ms of extra enqueue time a GET, 1.4-1.8
# with whole slices).
SLICE_SECONDS = 0.00005
PIECE = 8
BUSY_PAUSE = 0.0005
LIST_STEP = 250  # types whose figures a step gathers into a column
# The answer goes out in writes of about CHUNK bytes, one a turn: a 700 kB
# answer joined and sent at once held the reactor for 2-3 ms.
CHUNK = 65536
# What a scrape no longer needs (the last scrape's pieces, the snapshot
# before) is let go RELEASE_STEP items a step: freeing tens of thousands
# of objects at once held the reactor for 0.3-0.5 ms.
RELEASE_STEP = 100
KEPT_FORMATS = 4  # formats (Accept) whose last scrape's pieces are kept
# The queue figures a scrape shows are a snapshot: a scrape answers from
# the last one and starts reading the next one for the next scrape, one
# call every few ms spread over REFRESH_WINDOW seconds at most (and at most
# REFRESH_SHARE of the shortest time between two of the last PACE_SCRAPES
# scrapes: one late scrape does not stretch the next read), so that the
# reads never come in a dense run that would hold Redis, or a core, as the
# next enqueue arrives.  The first scrape, one whose snapshot is older than
# STALE_AFTER seconds (or 1.5 scrape intervals: the scraper stopped for a
# while) and GET /prometheus?fresh=1 read at once.
REFRESH_WINDOW = 10.0
REFRESH_SHARE = 0.75
PACE_SCRAPES = 4
MIN_GAP = 0.002  # seconds between two bursts of a background read, at least
# calls of a background read one after the other (each at a turn): the
# reactor's trip to each timed call cost as much as the call itself
READ_BURST = 4
REFRESH_DELAY = 0.02  # seconds from a scrape's answer to the read it started
STALE_AFTER = 60.0
# The background read a scrape starts is what costs the enqueues meanwhile:
# spread out as it is, it still slowed them by 0.02-0.03 ms at the median
# with 1,000 types and a scrape every 2 s (bench/scrape.py).  So a scrape
# starts one only once the snapshot is that many seconds old
# ([sharq-server] prometheus_refresh, 10 by default, which tap passes; an
# Exposition made without it reads at every scrape).
REFRESH_EVERY = 0.0

# name, help, TypeStats attribute
GAUGES = (
    ("sharqd_jobs_pending", "Jobs waiting in their queues.", "pending"),
    ("sharqd_jobs_active", "Jobs handed to a worker and not finished yet.", "active"),
    ("sharqd_queues_ready", "Queues whose next job may be dequeued now.", "ready_queues"),
    ("sharqd_dead_letters", "Dead letters kept.", "dead_letters"),
    ("sharqd_oldest_pending_age_seconds",
     "How long the queue that has been ready longest has waited for a "
     "dequeue (0 when no queue is ready).", "oldest_ready_age"),
)
# name (without _total), help, totals field
COUNTERS = (
    ("sharqd_jobs_enqueued", "Jobs enqueued.", "enqueued"),
    ("sharqd_jobs_dequeued", "Jobs handed out by dequeues.", "dequeued"),
    ("sharqd_jobs_finished", "Jobs finished.", "finished"),
    ("sharqd_jobs_requeued", "Jobs put back because their lease expired.", "requeued"),
    ("sharqd_jobs_dead_lettered", "Jobs moved to the dead letters.", "dead_lettered"),
)
REJECTIONS = (("duplicate", "rejected_duplicate"),
              ("max_queued_length", "rejected_max_queued_length"))
# gzip answers: the figures by type are deflated once per snapshot (level 1:
# 2 ms for 700 kB, a tenth of the size), and each scrape deflates only its
# own part after them, in the same gzip member
GZIP_LEVEL = 1
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                    5, 10, 30, 60)


class Figures:
    """A snapshot of the queue figures: the TypeStats of every type, when
    their read began (clock seconds) and how long it took."""

    def __init__(self, stats, started, took):
        self.stats = stats
        self.started = started
        self.took = took


def queue_families(stats, age=None):
    """Metric families of a list of TypeStats, labelled by queue_type; of
    None (Redis did not answer) only sharqd_redis_up 0.  age: (seconds
    since the read of the figures began, seconds the read took), or None
    for no such gauges."""
    families = {}
    for _, make, _ in _queue_pieces(stats, 2 * len(stats or ()) or 2, age):
        family = make()
        if family.name in families:
            families[family.name].samples.extend(family.samples)
        else:
            families[family.name] = family
    return list(families.values())


def _queue_pieces(stats, size, age=None):
    """(rows, make, first) for each piece of each queue family, at most
    `size` samples: rows are the piece's (label values, value) pairs (what
    it holds: the same rows encode the same), make() builds the piece as a
    family, first marks the first piece of a family (it carries the HELP
    and TYPE lines when encoded)."""
    for column in _queue_columns(stats, size, age):
        yield from _pieces_of(*column)


def _queue_columns(stats, size, age=None):
    """Each queue family as a column (see _column_steps)."""
    return [column for column in _column_steps(stats, size, age) if column is not None]


def _column_steps(stats, size, age=None):
    """Each queue family as (kind, name, help, label names, labels, values,
    samples a piece), where labels[i] and values[i] are the label values
    and the value of its i-th sample: columns compare and slice in C, not
    in a Python loop per sample.  None between steps of LIST_STEP types:
    with 1,000 types a column's lists take up to 0.4 ms to build."""
    yield from _head_columns(stats, size, age)
    if stats is not None:
        yield from _type_columns(stats, size)


def _head_columns(stats, size, age=None):
    """The columns of a scrape's own: whether Redis answered it, and the
    age of the figures shown (see queue_families)."""
    yield (GaugeMetricFamily, "sharqd_redis_up", "1 when Redis answered this scrape, else 0.",
           [], [()], [0 if stats is None else 1], size)
    if stats is None or age is None:
        return
    yield (GaugeMetricFamily, "sharqd_redis_figures_age_seconds",
           "Seconds since the read of the queue figures shown began: they are "
           "a snapshot, read in the background between scrapes.",
           [], [()], [round(age[0], 3)], size)
    yield (GaugeMetricFamily, "sharqd_redis_figures_read_seconds",
           "Seconds the read of the queue figures shown took (a background "
           "read is spread out on purpose).", [], [()], [round(age[1], 3)], size)


def _type_columns(stats, size):
    """The columns of the figures by queue type."""
    types = []
    yield from _gathered(stats, lambda part: [(s.queue_type,) for s in part], types)
    for name, doc, attr in GAUGES:
        values = []
        yield from _gathered(stats, lambda part: [getattr(s, attr) for s in part], values)
        yield (GaugeMetricFamily, name, doc, ["queue_type"], types, values, size)
    for name, doc, key in COUNTERS:
        values = []
        yield from _gathered(stats, lambda part: [s.totals.get(key, 0) for s in part], values)
        yield (CounterMetricFamily, name, doc, ["queue_type"], types, values, size)
    labels, values = [], []
    yield from _gathered(stats, lambda part: [(s.queue_type, reason) for s in part
                                              for reason, _ in REJECTIONS], labels)
    yield from _gathered(stats, lambda part: [s.totals.get(key, 0) for s in part
                                              for _, key in REJECTIONS], values)
    yield (CounterMetricFamily, "sharqd_enqueue_rejected", "Enqueues refused, by reason.",
           ["queue_type", "reason"], labels, values,
           max(1, size // len(REJECTIONS)) * len(REJECTIONS))


def _gathered(stats, f, into):
    """into gets f(part) for each part of LIST_STEP TypeStats; None after
    each part (a step)."""
    for i in range(0, len(stats), LIST_STEP):
        into += f(stats[i:i + LIST_STEP])
        yield None


def _pieces_of(kind, name, doc, label_names, labels, values, size):
    """_queue_pieces' pieces of one family (a column of _queue_columns)."""
    for i in range(0, max(len(values), 1), size):
        rows = tuple(zip(labels[i:i + size], values[i:i + size]))
        yield (name,) + rows, partial(_family, kind, name, doc, label_names, rows), i == 0


def _family(kind, name, doc, labels, rows):
    family = kind(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


class ProcessMetrics:
    """This process's own metrics: HTTP answers, Redis errors, long-poll
    waiters, and the process (CPU, memory, file descriptors, GC)."""

    def __init__(self, waiting=lambda: 0):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = RequestMetrics()
        registry.register(self.requests)
        self.redis_errors = Counter("sharqd_redis_errors",
                                    "Redis commands that got no usable answer, by kind.",
                                    ["kind"], registry=registry)
        waiters = Gauge("sharqd_longpoll_waiters",
                        "Long-poll dequeues waiting in this process.", registry=registry)
        waiters.set_function(waiting)
        self.observe = self.requests.observe

    def redis_error(self, kind):
        self.redis_errors.labels(kind).inc()

    def collect(self):
        return self.registry.collect()


class RequestMetrics:
    """
    sharqd_http_requests_total{route,code} and
    sharqd_http_request_duration_seconds{route}, as a prometheus_client
    Counter and Histogram would expose them, but counted in plain dicts
    and lists: a Counter's inc() and a Histogram's observe() take a lock
    and a call per bucket, a tenth of the CPU of an enqueue.  The families
    are built when a scrape collects them (a custom collector).
    """

    def __init__(self, buckets=DURATION_BUCKETS):
        self.buckets = tuple(buckets)
        self.bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        self.answered = {}   # (route, code) -> requests answered
        self.durations = {}  # route -> [count per bucket (not cumulative)..., sum]
        self.made = {}  # route -> (its row as a tuple, its samples made of it)

    def observe(self, route, code, seconds):
        """Count one answered request."""
        key = (route, code)
        answered = self.answered
        answered[key] = answered.get(key, 0) + 1
        row = self.durations.get(route)
        if row is None:
            row = self.durations[route] = [0] * len(self.bounds) + [0.0]
        # the first bucket whose bound is >= seconds, as Histogram.observe
        row[bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def collect(self):
        requests = CounterMetricFamily("sharqd_http_requests", "HTTP requests answered.",
                                       labels=["route", "code"])
        for (route, code), n in self.answered.items():
            requests.add_metric([route, str(code)], float(n))
        durations = _durations()
        for route, row in self.durations.items():
            durations.samples.extend(self._samples_of(route, row))
        return [requests, durations]

    def _samples_of(self, route, row):
        """The histogram samples of a route, made again only when its row
        changed: most routes' do not between two scrapes, and making all of
        them held the reactor for about 0.5 ms with 20 routes."""
        key = tuple(row)
        last = self.made.get(route)
        if last is None or last[0] != key:
            total, buckets = 0, []
            for bound, n in zip(self.bounds, row):
                total += n
                buckets.append((bound, float(total)))
            family = _durations()
            family.add_metric([route], buckets, row[-1])
            last = self.made[route] = (key, family.samples)
        return last[1]


def _durations():
    return HistogramMetricFamily("sharqd_http_request_duration_seconds",
                                 "Time from routing a request to its answer.",
                                 labels=["route"])


class _Families:
    """A collector of a fixed list of families, for the encoders."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class _Pieces:
    """prometheus_client's encoder run on one piece of a family at a time:
    the pieces joined are byte for byte what the encoder writes for all of
    the families at once (the test says so), but no single call holds the
    reactor for long."""

    def __init__(self, encoder, previous=None):
        self.encoder = encoder
        self.end = encoder(_Families([]))  # "# EOF" of OpenMetrics; none in text
        self.heads = {}  # family name -> its HELP/TYPE lines as encoded
        self.out = []
        # the pieces of the previous scrape in this format, by what they
        # hold: most types' figures do not change from one to the next
        self.previous = previous or {}
        self.encoded = {}
        self.keys = []  # the key of each text in out

    def add(self, family, first=True):
        """Encode a family, or a piece of one: a piece after the first
        leaves out the HELP and TYPE lines the first one wrote."""
        self.add_made(
            (family.name, family.type,
             tuple((s.name, tuple(s.labels.items()), s.value, s.timestamp)
                   for s in family.samples)),
            lambda: family, first)

    def add_made(self, key, make, first=True):
        """Encode the family (or piece) make() builds, unless the last
        scrape encoded one with the same key."""
        key = (key, first)
        text = self.previous.get(key)
        if text is None:
            family = make()
            text = self.encoder(_Families([family]))[:-len(self.end) or None]
            if not first:
                text = text[len(self._head(family)):]
        self.encoded[key] = text
        self.out.append(text)
        self.keys.append(key)

    def add_column(self, column):
        """Add a queue family (a column of _queue_columns) whole when it
        holds what it held at the last scrape (most do: one list compare
        instead of a step per piece); False when it does not."""
        name, labels, values = column[1], column[4], column[5]
        last = self.previous.get(name)
        if last is None or last[0] != labels or last[1] != values:
            return False
        self.encoded[name] = last
        self.encoded.update(last[3])  # its pieces, for when one changes
        self.out.append(last[2])
        self.keys.append(name)
        return True

    def keep_column(self, column, start):
        """Note the pieces added since out[start] as the column's, for
        add_column at the next scrape."""
        keys = self.keys[start:]
        self.encoded[column[1]] = (column[4], column[5], b"".join(self.out[start:]),
                                   {key: self.encoded[key] for key in keys})

    def _head(self, family):
        head = self.heads.get(family.name)
        if head is None:
            empty = Metric(family.name, family.documentation, family.type, family.unit)
            head = self.heads[family.name] = \
                self.encoder(_Families([empty]))[:-len(self.end) or None]
        return head

    def parts(self):
        """The answer, in the pieces encoded."""
        return self.out + [self.end]

    def body(self):
        return b"".join(self.parts())


# the text format writes these samples apart, after the family's others:
# such a family is encoded whole (sharqd has none: no _created samples)
_APART = ("_created", "_gsum", "_gcount")


def _split(family, size):
    """(piece, first) pairs: the family in pieces of at most size samples."""
    samples = family.samples
    if len(samples) <= size or any(s.name.endswith(_APART) for s in samples):
        yield family, True
        return
    for i in range(0, len(samples), size):
        piece = Metric(family.name, family.documentation, family.type, family.unit)
        piece.samples = samples[i:i + size]
        yield piece, i == 0


def _steps(pieces, stats, families, size=PIECE, age=None):
    """The encoding of a scrape, one piece of at most `size` samples per
    step (Cooperator drives it)."""
    yield from _column_pieces(pieces, _column_steps(stats, size, age))
    yield from _family_steps(pieces, families, size)


def _column_pieces(pieces, columns):
    for column in columns:
        if column is None or pieces.add_column(column):
            yield
            continue
        start = len(pieces.out)
        for rows, make, first in _pieces_of(*column):
            pieces.add_made(rows, make, first)
            yield
        pieces.keep_column(column, start)


def _family_steps(pieces, families, size=PIECE):
    for family in families:
        for piece, first in _split(family, size):
            pieces.add(piece, first)
            yield


def encode(stats, families, accept, size=PIECE, age=None):
    """(content type, body) in one go (tests, and what the pieces match)."""
    encoder, content_type = choose_encoder(accept)
    pieces = _Pieces(encoder)
    for _ in _steps(pieces, stats, families, size, age):
        pass
    return content_type, pieces.body()


def _deflater():
    """A raw deflate stream (no zlib header: the gzip member has its own)."""
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)


class _Deflated:
    """Parts deflated as one run of a deflate stream that another may
    follow (it ends on a sync flush, not on the final block), with the
    CRC-32 and length of what went in."""

    def __init__(self):
        self.parts = []
        self.crc = 0
        self.size = 0

    def steps(self, parts):
        """Deflate the parts, one a step (Cooperator drives it)."""
        deflater = _deflater()
        for part in parts:
            self.parts.append(deflater.compress(part))
            self.crc = zlib.crc32(part, self.crc)
            self.size += len(part)
            yield
        self.parts.append(deflater.flush(zlib.Z_SYNC_FLUSH))


def gzip_member(first, rest):
    """One gzip member (RFC 1952) of first's input (a _Deflated) then the
    parts rest: only rest is deflated here, the deflate stream goes on from
    where first's ended (a sync flush ends on a byte, and a deflate block
    may refer back or not), and its CRC-32 goes on from first's."""
    rest = b"".join(rest)
    deflater = _deflater()
    tail = deflater.compress(rest) + deflater.flush()
    trailer = struct.pack("<II", zlib.crc32(rest, first.crc),
                          (first.size + len(rest)) & 0xffffffff)
    return [GZIP_HEADER, *first.parts, tail, trailer]


def accepts_gzip(header):
    """Whether an Accept-Encoding header value takes gzip."""
    for item in (header or "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() in ("gzip", "x-gzip"):
            q = params.replace(" ", "").lower()
            return not q.startswith("q=") or q[2:].strip("0.") != ""
    return False


def _slices(seconds):
    """A Cooperator's termination predicate factory: each slice of work
    ends once it has run `seconds`.  Each begins with a collection of the
    youngest objects: a scrape makes and lets go of tens of thousands of
    objects, and as CPython counts allocations less frees to time its
    young collections, the new objects pile up uncollected and one
    collection later goes over all of them at once (3-4 ms with 1,000
    types, bench/scrape.py)."""
    def predicate():
        gc.collect(0)
        end = time.perf_counter() + seconds
        return lambda: time.perf_counter() >= end
    return predicate


def _labelled(families, worker):
    """The families with worker="N" added to every sample."""
    out = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [s._replace(labels={**s.labels, "worker": worker})
                        for s in family.samples]
        out.append(copy)
    return out


def _merge(groups):
    """One family per name, holding the samples of every group."""
    merged = {}
    for families in groups:
        for family in families:
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                copy = Metric(family.name, family.documentation, family.type,
                              family.unit)
                copy.samples = list(family.samples)
                merged[family.name] = copy
    return list(merged.values())


class _SocketPaths:
    """Agent endpoints: http://worker-N/ is the unix socket DIR/worker-N.sock."""

    def __init__(self, reactor, folder):
        self.reactor = reactor
        self.folder = folder

    def endpointForURI(self, uri):
        name = uri.host.decode("ascii")
        return UNIXClientEndpoint(self.reactor, os.path.join(self.folder, name + ".sock"),
                                  timeout=PEER_TIMEOUT)


def socket_path(folder, worker):
    return os.path.join(folder, f"worker-{worker}.sock")


class Exposition:
    """Builds the /prometheus answer: the queues' figures, this process's
    metrics and, with workers, the other workers' metrics."""

    log = Logger()

    def __init__(self, own, reactor, folder=None, worker=1, clock=None,
                 refresh_every=REFRESH_EVERY):
        self.own = own
        # seconds from the start of one read of the figures to the next's
        # at least (see REFRESH_EVERY)
        self.refresh_every = refresh_every
        self.reactor = reactor
        # the snapshot's age and the pace of its background reads
        self.clock = reactor if clock is None else clock
        self.folder = folder
        self.worker = str(worker)
        # requests this process is answering, scrapes included (the site's
        # in_flight, set by tap); renders: scrapes being encoded now
        self.in_flight = lambda: 0
        self.scrapes = 0  # scrapes being read, encoded or sent now
        self.unscraped = []  # Deferreds of no_scrape()
        self.waiting = set()  # _Turns waiting for the other requests to end
        # the Figures of every type a queue knows, read at once; scrapes
        # that come while a read runs share its result
        self.read_figures = SharedRead(self._read)
        self.snapshot = None  # the last Figures read, None until a read works
        self.refreshing = False  # a background read runs
        self.last_scrape = None  # clock seconds of the last scrape
        # seconds between each two of the last PACE_SCRAPES scrapes, the
        # last two's last
        self.intervals = deque(maxlen=PACE_SCRAPES - 1)
        # content type -> the last scrape's pieces (_Pieces.encoded) of its
        # own gauges and the processes' families
        self.encoded = {}
        # content type -> _TypesEncoded: the figures by type encoded once
        # per snapshot; a scrape of the same snapshot sends them as they are
        self.types = {}
        # content type -> (the Accept of its last scrape, whether it took gzip)
        self.formats = {}
        self.cooperator = Cooperator(
            terminationPredicateFactory=_slices(SLICE_SECONDS),
            scheduler=self._schedule)
        if folder is not None:
            self.agent = Agent.usingEndpointFactory(reactor, _SocketPaths(reactor, folder))

    def peers(self):
        if self.folder is None:
            return []
        mine = socket_path(self.folder, self.worker)
        return sorted(os.path.basename(p)[:-len(".sock")]
                      for p in glob.glob(os.path.join(self.folder, "worker-*.sock"))
                      if p != mine)

    async def _peer(self, name):
        d = self.agent.request(b"GET", f"http://{name}/metrics".encode())
        d.addTimeout(PEER_TIMEOUT, self.reactor)
        response = await d
        text = (await readBody(response)).decode("utf-8")
        return list(text_string_to_metric_families(text))

    async def process_families(self):
        """Every process's families; labelled by worker when there are
        several.  This process's are collected a family a step, in the
        slices of the encoding: all of them at once held the reactor for
        0.2-0.7 ms, and a turn for each added 15-odd turns to a GET while
        enqueues came, a trip round the reactor each."""
        own = []
        await self.cooperator.coiterate(_into(self.own.collect(), own))
        if self.folder is None:
            return own
        names = self.peers()
        results = await DeferredList(
            [Deferred.fromCoroutine(self._peer(name)) for name in names], consumeErrors=True)
        groups = [_labelled(own, self.worker)]
        for name, (ok, result) in zip(names, results):
            if ok:
                groups.append(_labelled(result, name[len("worker-"):]))
            else:  # a worker restarting: the next scrape has it again
                self.log.warn("No metrics from {name}: {why}", name=name,
                              why=result.getErrorMessage())
        return _merge(groups)

    async def render(self, stats, accept, age=None, gzip=False):
        """(content type, parts of the body) for a list of TypeStats and an
        Accept header (age: see queue_families).  With 1,000 types that is
        tens of milliseconds of Python: it runs in slices (see
        SLICE_SECONDS), with the reactor serving in between."""
        families = await self.process_families()
        return await self._encode(stats, accept or "", families, age, gzip)

    async def _encode(self, stats, accept, families, age=None, gzip=False):
        """render() once the families of the processes are collected; what
        it encodes is kept for the next one in the same format."""
        encoder, content_type = choose_encoder(accept)
        types = await self._types_encoded(stats, encoder, content_type)
        last = self.encoded.get(content_type)
        pieces = _Pieces(encoder, last)
        await self.cooperator.coiterate(
            _column_pieces(pieces, _head_columns(stats, PIECE, age)))
        head = len(pieces.out)
        await self.cooperator.coiterate(_family_steps(pieces, families))
        if content_type in self.encoded or len(self.encoded) < KEPT_FORMATS:
            self.encoded[content_type] = pieces.encoded
            self.formats[content_type] = (accept, gzip)
            if last is not None:  # a scrape that still reads it encodes afresh
                self.release(last)
        if gzip:  # the figures by type first: their CRC-32 is kept with them
            return content_type, gzip_member(await self._deflated(types), pieces.parts())
        parts = [] if types is None else types.pieces.out
        return content_type, pieces.out[:head] + parts + pieces.parts()[head:]

    async def _types_encoded(self, stats, encoder, content_type):
        """The figures by type (a _TypesEncoded): those of the last scrape of
        the same snapshot in the same format, else encoded, reusing what
        did not change since (with 1,000 types, going over the columns to
        find that out was half of a scrape's CPU)."""
        if stats is None:
            return None
        kept = self.types.get(content_type)
        if kept is not None and kept.stats is stats:
            return kept
        pieces = _Pieces(encoder, None if kept is None else kept.pieces.encoded)
        await self.cooperator.coiterate(_column_pieces(pieces, _type_columns(stats, PIECE)))
        made = _TypesEncoded(stats, pieces)
        if content_type in self.types or len(self.types) < KEPT_FORMATS:
            self.types[content_type] = made
            if kept is not None:  # a scrape that still reads it encodes afresh
                self.release(kept.pieces.encoded)
        return made

    async def _deflated(self, types):
        """The figures by type deflated, once per snapshot and format."""
        if types is None:
            return _Deflated()
        if types.deflated is None:
            deflated = _Deflated()
            await self.cooperator.coiterate(deflated.steps(types.pieces.out))
            types.deflated = deflated
        return types.deflated

    async def _encode_ahead(self, figures):
        """Encode a new snapshot's figures by type in the formats of the
        last scrapes (deflated too where they took gzip): the next scrape
        finds them encoded and encodes only its own part (the processes'
        figures, the snapshot's age), a tenth of the work, so that a
        scrape's answer does not make the enqueues that come meanwhile
        wait (bench/scrape.py)."""
        for content_type, (accept, gzip) in list(self.formats.items()):
            types = await self._types_encoded(figures.stats, choose_encoder(accept)[0],
                                              content_type)
            if gzip:
                await self._deflated(types)

    async def send(self, write, parts):
        """write(chunk) the parts of a body in chunks of about CHUNK bytes,
        one a turn."""
        self.scrapes += 1
        try:
            chunk, size = [], 0
            for part in parts:
                chunk.append(part)
                size += len(part)
                if size >= CHUNK:
                    await self.turn()
                    write(b"".join(chunk))
                    chunk, size = [], 0
            if chunk:
                await self.turn()
                write(b"".join(chunk))
        finally:
            self._scrape_ended()

    def release(self, items):
        """Let go of a list or a dict that only this holds now, a few
        items a step (see RELEASE_STEP)."""
        self.cooperator.coiterate(_release(items))

    async def scrape(self, queue, accept, fresh=False, gzip=False):
        """(content type, parts of the body) of a scrape: the figures of
        every type the queue knows (None while Redis does not answer), then
        render()."""
        self.scrapes += 1
        try:
            figures = await self.figures(queue, fresh)
            if figures is None:
                return await self.render(None, accept, gzip=gzip)
            age = (self.clock.seconds() - figures.started, figures.took)
            return await self.render(figures.stats, accept, age, gzip)
        finally:
            self._scrape_ended()

    def _scrape_ended(self):
        self.scrapes -= 1
        if not self.scrapes and self.unscraped:
            # a turn later: the route sends what it rendered right away
            self.reactor.callLater(0, self._no_scrape)

    def _no_scrape(self):
        if not self.scrapes:
            waiting, self.unscraped = self.unscraped, []
            for d in waiting:
                d.callback(None)

    def no_scrape(self):
        """A Deferred that fires once no scrape is being rendered or sent."""
        d = Deferred()
        self.unscraped.append(d)
        if not self.scrapes:
            self.reactor.callLater(0, self._no_scrape)
        return d

    async def figures(self, queue, fresh=False):
        """The Figures a scrape shows: the last snapshot, with the next one
        read in the background for the next scrape once the last one is
        refresh_every seconds old; read at once when there
        is none yet, when it is stale, or when asked for (fresh).  None
        while Redis does not answer: the snapshot is dropped, so the first
        scrape once Redis is back reads at once."""
        now = self.clock.seconds()
        snapshot = self.snapshot
        interval = self.intervals[-1] if self.intervals else None
        if not fresh:  # a person's fresh reads do not set the scrapers' pace
            if self.last_scrape is not None:
                self.intervals.append(now - self.last_scrape)
            self.last_scrape = now
        stale = max(STALE_AFTER, 2 * self.refresh_every)
        if interval is not None:
            stale = max(stale, 1.5 * interval)
        if fresh or snapshot is None or now - snapshot.started > stale:
            try:
                return self._keep(await self.read_figures(queue))
            except RedisUnavailable:
                self.snapshot = None
                return None
        try:  # sharqd_redis_up stays current: one PING, no script
            await queue.ping()
        except RedisUnavailable:
            self.snapshot = None
            return None
        if not self.refreshing and now - snapshot.started >= self.refresh_every:
            self.refreshing = True
            Deferred.fromCoroutine(self._refresh(queue))
        return snapshot

    def _keep(self, figures):
        """Swap figures in whole when their read began after the current
        snapshot's ended: every type is then read later than in the one
        shown before, so the counters never go back (a fresh read that
        overlapped a background one wins, whichever ends first)."""
        last = self.snapshot
        if last is None or figures.started >= last.started + last.took:
            self.snapshot = figures
            if last is not None:  # a scrape rendering it keeps what it needs
                self.release(list(last.stats))
        return figures

    def refresh_window(self):
        """Seconds a background read spreads its calls over."""
        if not self.intervals:
            return REFRESH_WINDOW
        return min(REFRESH_WINDOW, REFRESH_SHARE * min(self.intervals))

    async def _read(self, queue, window=None):
        """Figures read one call after another, each at a turn: at once, or
        in bursts of READ_BURST calls spread evenly over window seconds (a
        background read)."""
        started = self.clock.seconds()
        types = await queue.known_types()
        batches = queue.stats_batches(types)
        bursts = -(-len(batches) // READ_BURST)
        gap = None if window is None else max(MIN_GAP, window / max(bursts, 1))
        stats = []
        for i, batch in enumerate(batches):
            if gap is not None and i % READ_BURST == 0:
                await deferLater(self.clock, gap)
            await self.turn()
            stats.extend(await queue.stats_many(batch))
        return Figures(_in_order(stats, types), started, self.clock.seconds() - started)

    async def _refresh(self, queue):
        """The next snapshot, read in the background over refresh_window(),
        swapped in whole at the end and encoded ahead for the next scrape.
        A failure ends it (the next scrape reads at once)."""
        try:
            # the scrape that started it is answered first: its work and
            # the read's first calls at once held the reactor in turn
            await self.no_scrape()
            # and once the scraper has it (the end of the answer is still
            # on its way as the last write returns)
            await deferLater(self.reactor, REFRESH_DELAY)
            await self.turn()
            figures = self._keep(await self._read(queue, self.refresh_window()))
            if self.snapshot is figures:
                await self._encode_ahead(figures)
        except RedisUnavailable:
            self.snapshot = None
        except Exception:
            self.snapshot = None
            self.log.failure("The background read of the queue figures failed")
        finally:
            self.refreshing = False

    def busy(self):
        """Whether requests other than scrapes are in flight."""
        return self.in_flight() > self.scrapes

    def turn(self):
        """A Deferred that fires at the scrape's next turn (see
        SLICE_SECONDS): fired already when no other request is in flight
        (a trip round the reactor costs as much as a call of a read)."""
        if not self.busy():
            return succeed(None)
        d = Deferred()
        _Turn(self, d.callback, None)
        return d

    def _schedule(self, step):
        return _Turn(self, step)

    def request_ended(self):
        """Told by the site when a request ends: turns that wait for sharqd
        to be idle may come."""
        if self.waiting and not self.busy():
            for waiting in list(self.waiting):
                waiting.idle()


def _into(items, out):
    """Append the items to out, one a step."""
    for item in items:
        out.append(item)
        yield


def _release(items, step=RELEASE_STEP):
    """Empty a list or a dict, step items a step."""
    pop = items.popitem if isinstance(items, dict) else items.pop
    while items:
        for _ in range(min(step, len(items))):
            pop()
        yield


def _in_order(stats, types):
    """The TypeStats in the order of the types (read in that order on one
    Redis; on a cluster, master by master)."""
    if [s.queue_type for s in stats] == types:
        return stats
    order = {t: i for i, t in enumerate(types)}
    return sorted(stats, key=lambda s: order[s.queue_type])


class _TypesEncoded:
    """The figures by type of a snapshot (stats) encoded in one format:
    their _Pieces, and once a scrape took gzip, their _Deflated."""

    def __init__(self, stats, pieces):
        self.stats = stats
        self.pieces = pieces
        self.deflated = None


class _Turn:
    """f(*args) at a scrape's next turn: at once if no other request is in
    flight, else when the last one ends (Exposition.request_ended) and
    what it wrote has gone out, or BUSY_PAUSE at the latest.  cancel() as
    a DelayedCall's (a Cooperator's scheduler returns it).

    The turn and its DelayedCall refer to each other until it runs or is
    cancelled, when the link is dropped: a scrape takes thousands of
    turns, and left as cycles they would wait for the garbage collector,
    whose pass over them held the reactor for 5-20 ms (bench/scrape.py)."""

    def __init__(self, exposition, f, *args):
        self.exposition = exposition
        self.reactor = exposition.reactor
        self.f, self.args = f, args
        if exposition.busy():
            exposition.waiting.add(self)
            self.call = self.reactor.callLater(BUSY_PAUSE, self.run)
        else:
            self.call = self.reactor.callLater(0, self.run)

    def idle(self):
        """The other requests have ended: the turn comes once the reactor
        has sent what they wrote (timed calls run before the reactor polls
        its sockets, so a second hop)."""
        self.exposition.waiting.discard(self)
        self.call.cancel()
        self.call = self.reactor.callLater(0, self.after_io)

    def after_io(self):
        self.call = self.reactor.callLater(0, self.run)

    def run(self):
        self.call = None
        self.exposition.waiting.discard(self)
        self.f(*self.args)

    def cancel(self):
        self.exposition.waiting.discard(self)
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class OwnMetricsResource(Resource):
    """What a worker serves on its private unix socket: its own metrics."""

    isLeaf = True

    def __init__(self, own):
        super().__init__()
        self.own = own

    def render_GET(self, request):
        encoder, content_type = choose_encoder("")
        request.setHeader(b"content-type", content_type.encode())
        return encoder(_Families(list(self.own.collect())))


class MetricsSocketService(StreamServerEndpointService):
    """With workers: this process's own metrics on DIR/worker-N.sock, for
    whichever process takes a /prometheus scrape.  The parent made the
    folder and removes it when it stops."""

    def __init__(self, folder, worker, metrics, reactor, own_folder=False):
        self.path = socket_path(folder, worker)
        self.folder = folder
        self.own_folder = own_folder
        site = Site(OwnMetricsResource(metrics))
        site.noisy = False
        super().__init__(UNIXServerEndpoint(reactor, self.path), site)

    def privilegedStartService(self):
        if os.path.exists(self.path):  # left by a worker that died
            os.unlink(self.path)
        super().privilegedStartService()

    def stopService(self):
        d = maybeDeferred(super().stopService)
        if self.own_folder:
            d.addBoth(lambda result: shutil.rmtree(self.folder, True) or result)
        return d
