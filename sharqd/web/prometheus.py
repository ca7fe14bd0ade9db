"""
GET /prometheus: the queues' figures, read from Redis at scrape time, and
each sharqd process's own metrics, in prometheus_client's exposition format.

With `workers > 1` every process keeps its own metrics and serves them on a
unix socket of its own in a folder the parent made; the process that takes
the scrape reads the others' and adds all of them, each sample labelled with
its `worker` number.  No Redis here: the queue figures come as TypeStats
from the queue layer.
"""

import glob
import os
import shutil
import sys

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge,
                               Histogram, PlatformCollector, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            Metric)
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

# the *_created samples double the size of a scrape for little use
disable_created_metrics()

PEER_TIMEOUT = 1.0  # seconds a scrape waits for another worker's metrics
SWITCH_INTERVAL = 0.0001  # seconds, while a scrape is encoded (see render)

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
DURATION_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                    5, 10, 30, 60)


def queue_families(stats):
    """Metric families of a list of TypeStats, labelled by queue_type; of
    None (Redis did not answer) only sharqd_redis_up 0."""
    up = GaugeMetricFamily("sharqd_redis_up", "1 when Redis answered this scrape, else 0.",
                           value=0 if stats is None else 1)
    if stats is None:
        return [up]
    families = [up]
    for name, doc, attr in GAUGES:
        family = GaugeMetricFamily(name, doc, labels=["queue_type"])
        for s in stats:
            family.add_metric([s.queue_type], getattr(s, attr))
        families.append(family)
    for name, doc, key in COUNTERS:
        family = CounterMetricFamily(name, doc, labels=["queue_type"])
        for s in stats:
            family.add_metric([s.queue_type], s.totals.get(key, 0))
        families.append(family)
    family = CounterMetricFamily("sharqd_enqueue_rejected",
                                 "Enqueues refused, by reason.",
                                 labels=["queue_type", "reason"])
    for s in stats:
        for reason, key in REJECTIONS:
            family.add_metric([s.queue_type, reason], s.totals.get(key, 0))
    families.append(family)
    return families


class ProcessMetrics:
    """This process's own metrics: HTTP answers, Redis errors, long-poll
    waiters, and the process (CPU, memory, file descriptors, GC)."""

    def __init__(self, waiting=lambda: 0):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter("sharqd_http_requests", "HTTP requests answered.",
                                ["route", "code"], registry=registry)
        self.duration = Histogram("sharqd_http_request_duration_seconds",
                                  "Time from routing a request to its answer.",
                                  ["route"], buckets=DURATION_BUCKETS, registry=registry)
        self.redis_errors = Counter("sharqd_redis_errors",
                                    "Redis commands that got no usable answer, by kind.",
                                    ["kind"], registry=registry)
        waiters = Gauge("sharqd_longpoll_waiters",
                        "Long-poll dequeues waiting in this process.", registry=registry)
        waiters.set_function(waiting)
        self._children = {}  # (route, code) -> the two labelled metrics

    def observe(self, route, code, seconds):
        """Count one answered request."""
        pair = self._children.get((route, code))
        if pair is None:  # .labels() is the costly part: once per pair
            pair = (self.requests.labels(route, str(code)), self.duration.labels(route))
            self._children[(route, code)] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def redis_error(self, kind):
        self.redis_errors.labels(kind).inc()

    def collect(self):
        return self.registry.collect()


def _encode(stats, families, accept):
    encoder, content_type = choose_encoder(accept)
    return content_type, encoder(_Families(queue_families(stats) + families))


class _Families:
    """A collector of a fixed list of families, for the encoders."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


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

    def __init__(self, own, reactor, folder=None, worker=1):
        self.own = own
        self.reactor = reactor
        self.folder = folder
        self.worker = str(worker)
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
        """Every process's families; labelled by worker when there are several."""
        own = list(self.own.collect())
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

    async def render(self, stats, accept):
        """(content type, body) for a list of TypeStats and an Accept header.
        The families are built and encoded in a thread: with 1,000 types
        that is tens of milliseconds of Python, which would otherwise hold
        up every request this process is serving."""
        families = await self.process_families()
        # the encoding thread holds the GIL in slices of the switch interval
        # (5 ms by default): shorter slices let the reactor answer requests
        # in between with less delay while a scrape is being encoded
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
        try:
            return await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                           _encode, stats, families, accept or "")
        finally:
            sys.setswitchinterval(previous)


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
