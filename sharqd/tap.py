"""
Composition root: the twistd options and the service tree of one sharqd.
"""

import gc
import ipaddress
import os
import re
import tempfile

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from sharqd import __version__
from sharqd.config import Config
from sharqd.errors import ConfigError
from sharqd.gunicorn_config import load as load_with_gunicorn
from sharqd.logs import json_observer
from sharqd.web.auth import Guard, Tokens
from sharqd.web.hangup import HangupService
from sharqd.web.site import AdoptedPortService, HTTPService, SharqSite, raise_fd_limit
from sharqd.web.tls import ReloadableTLS, parse_ssl
from sharqd.queue.channels import ready_listener, ready_pattern
from sharqd.queue.migrate import LayoutWait, MigrationService
from sharqd.queue.operations import Queue
from sharqd.redis.cluster import ClusterService, ClusterSubscription
from sharqd.redis.connection import RedisService, Subscription
from sharqd.queue.requeue import RequeueService
from sharqd.queue.waiters import Waiters
from sharqd.web.app import Api
from sharqd.web.prometheus import Exposition, MetricsSocketService, ProcessMetrics
from sharqd.web.workers import ParentWatch, WorkerPool

log = Logger()
LISTEN_BACKLOG = 1024


class Options(usage.Options):
    synopsis = "-c FILE"
    longdesc = "Run sharqd, the SharQ Server API over Redis, from a SharQ config file."
    optParameters = [
        ["config", "c", None, "Path of the SharQ configuration file."],
        ["gunicorn-config", None, None,
         "Path of a gunicorn config file (the original's -gc): its bind, "
         "workers and accesslog apply where the SharQ config does not set them."],
        # internal: a worker process serves on its parent's listening socket
        ["adopt-fd", None, None, None, int],
        # internal: a worker's number, and where the workers' metrics sockets are
        ["worker", None, 1, None, int],
        ["metrics-dir", None, None, None],
    ]

    def opt_version(self):
        """Print sharqd's version and exit."""
        print(f"sharqd {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("give the config file with -c FILE")
        # A bad config is one line on stderr and exit status 1: SystemExit
        # carries through twistd without a traceback or the usage text.
        try:
            if self["gunicorn-config"]:
                self.loaded = load_with_gunicorn(
                    self["config"], self["gunicorn-config"],
                    quiet=self["adopt-fd"] is not None)
            else:
                self.loaded = Config.from_file(self["config"])
        except ConfigError as e:
            raise SystemExit(f"sharqd: {e}")


def listen_description(server):
    """The endpoint string to listen on: `listen`, else host and port."""
    if server.listen:
        return server.listen
    host = server.host.replace(":", "\\:")  # IPv6 literals
    return f"tcp:{server.port}:interface={host}"


def config_args(options):
    """The config options again, for the worker processes."""
    args = ["-c", options["config"]]
    if options["gunicorn-config"]:
        args += ["--gunicorn-config", options["gunicorn-config"]]
    return args


class SharqService(MultiService):
    """Stops its children one by one, newest first: the HTTP side drains
    before the requeue timer stops, and Redis closes last.  (A plain
    MultiService stops them all at once.)"""

    log_observer = None  # the JSON log observer, with log_format = json

    def setServiceParent(self, parent):
        # twistd's application: its ILogObserver component, when set,
        # replaces the text log twistd would start
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def stopService(self):
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self):
        self.running = False
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)


class CollectorTuning(Service):
    """
    Python's cyclic garbage collector, set for a server: what exists once
    the service starts (modules, classes, functions: most objects of the
    process, and never garbage) is moved out of its reach with gc.freeze(),
    and young collections run every YOUNG_THRESHOLD allocations instead of
    700.  With the defaults, collections walking those objects took about
    half of sharqd's CPU while 1,000 long-poll clients were answered at
    once, and a share of every request's (bench/longpoll.py,
    bench/instructions.py).  Cycles are still collected, less often.
    """

    YOUNG_THRESHOLD = 20000

    def startService(self):
        super().startService()
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(self.YOUNG_THRESHOLD, older, oldest)


def open_access_log(config):
    """The access log's path, its folder made and the file checked writable
    now, so a bad path stops startup with one line."""
    path = config.server.accesslog
    if not path:
        return None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(path, "a").close()
    except OSError as e:
        raise SystemExit(f"sharqd: {config.source}: [sharq-server] accesslog = "
                         f"{path!r}: cannot write: {e.strerror}")
    return path


def _fail(config, section, key, value, why):
    raise SystemExit(f"sharqd: {config.source}: [{section}] {key} = {value!r}: {why}")


def listening(config, site, reactor):
    """(endpoint, factory, reloader or None) for `listen` or host/port; an
    ssl: endpoint is TCP with our own reloadable TLS around the site."""
    where = listen_description(config.server)
    if where.startswith("ssl:"):
        try:
            tls = ReloadableTLS(parse_ssl(where))
        except ValueError as e:
            _fail(config, "sharq-server", "listen", where, e)
        return tls.endpoint(reactor), tls.wrap(site), tls.reload
    if not config.server.listen:
        # a backlog above Twisted's 50, so a burst of connects is not dropped
        where += f":backlog={LISTEN_BACKLOG}"
    try:
        return endpoints.serverFromString(reactor, where), site, None
    except Exception as e:
        _fail(config, "sharq-server", "listen", where, e)


def guarded(config, resource):
    """(the resource behind the token check, the tokens' reloader, the
    site's check before a body is read), or as it is without [auth]."""
    auth = config.auth
    if not auth.enabled:
        return resource, None, None
    try:
        tokens = Tokens.from_file(auth.tokens_file)
    except ConfigError as e:
        _fail(config, "auth", "tokens_file", auth.tokens_file, e)
    if not tokens.tokens:
        log.warn("{path} holds no token: every route but {open} answers 401",
                 path=auth.tokens_file, open=" ".join(auth.open_routes))
    guard = Guard(tokens, auth.open_routes, resource)
    return guard, tokens.reload, guard.early_refusal


def is_private(where):
    """Does the endpoint string listen on loopback or a unix socket only?"""
    if where.startswith("unix:"):
        return True
    found = re.search(r"(?:^|:)interface=((?:[^:\\]|\\.)*)", where)
    interface = found.group(1).replace("\\", "") if found else ""
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return interface == "localhost"


def make_queue(config, reactor):
    """The Queue over one Redis or a Redis Cluster, and the service that
    owns its connections.  Single Redis: execute goes straight to the
    pool, as before."""
    if config.redis.clustered:
        redis = ClusterService(config.redis, reactor=reactor)
        masters, node_of = redis.masters, redis.node_of
    else:
        redis = RedisService(config.redis, reactor=reactor)
        masters = node_of = None
    durable = redis.execute_durable if config.redis.wait_replicas else None
    queue = Queue(redis.execute, config.redis.key_prefix, config.sharq.job_expire_interval,
                  dead_letter_limit=config.sharq.dead_letter_limit, masters=masters,
                  durable=durable, node_of=node_of)
    return queue, redis


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    config = getattr(options, "loaded", None) or Config.from_file(options["config"])
    server = config.server
    max_connections = raise_fd_limit(server.max_connections)

    # Stopped newest first, one after the other (SharqService), so that
    # SIGTERM is clean: the front answers every client, then the
    # notifications, the requeue timer and Redis stop, and SIGHUP is
    # given back last.
    top = SharqService()
    if os.environ.get("SHARQD_GC_DEFAULTS") is None:  # for before/after benches
        CollectorTuning().setServiceParent(top)
    if config.server.log_format == "json":
        top.log_observer = json_observer(getattr(options, "parent", None) or {})
    hangup = HangupService(reactor)
    hangup.setServiceParent(top)
    queue, redis = make_queue(config, reactor)
    redis.setServiceParent(top)
    # queue operations wait until the Redis layout is today's: the parent
    # upgrades it, workers wait for the parent's mark
    upgrade = MigrationService if options["adopt-fd"] is None else LayoutWait
    upgrade(queue, reactor, config.redis.timeout).setServiceParent(top)
    RequeueService(queue, config.sharq.job_requeue_interval, reactor).setServiceParent(top)
    # each waiter holds a connection: more waiters than connections cannot be
    waiters = Waiters(queue, reactor, max_waiters=min(server.max_waiters, max_connections))
    prefix = config.redis.key_prefix
    subscription = ClusterSubscription if config.redis.clustered else Subscription
    subscription(redis if config.redis.clustered else config.redis, ready_pattern(prefix),
                 ready_listener(prefix, waiters.notify), waiters.subscribed,
                 reactor=reactor).setServiceParent(top)

    metrics = ProcessMetrics(waiters.waiting)
    redis.on_error = metrics.redis_error
    folder = options["metrics-dir"]
    if folder is None and config.server.workers > 1 and options["adopt-fd"] is None:
        folder = tempfile.mkdtemp(prefix="sharqd-metrics-")
    if folder is not None:
        MetricsSocketService(folder, options["worker"], metrics, reactor,
                             own_folder=options["metrics-dir"] is None).setServiceParent(top)
    exposition = Exposition(metrics, reactor, folder, options["worker"],
                            refresh_every=server.prometheus_refresh)
    api = Api(queue, config.sharq.default_job_requeue_limit, waiters, exposition,
              workers=config.server.workers, redis_address=redis.describe())
    resource, reload_tokens, admit = guarded(config, api.resource())
    site = SharqSite(resource, server.max_request_size,
                     access_log=open_access_log(config), reactor=reactor,
                     observe=lambda request, seconds: metrics.observe(
                         api.route_of(request), request.code, seconds),
                     idle_timeout=server.idle_timeout, header_timeout=server.header_timeout,
                     body_timeout=server.body_timeout, max_connections=max_connections,
                     admit=admit)
    # a scrape steps back while other requests are answered (long-polls
    # that only wait do not count)
    exposition.in_flight = lambda: site.in_flight - waiters.waiting()
    site.ended = exposition.request_ended
    endpoint, factory, reload_tls = listening(config, site, reactor)
    for reload in (site.reopen_log, reload_tokens, reload_tls):
        if reload is not None:
            hangup.add(reload)
    # The front stops all at once, newest first: the long-poll waiters are
    # answered (503) at once, the workers are told to stop, and the HTTP
    # side stops listening and lets the requests in flight finish.
    front = MultiService()
    front.setServiceParent(top)
    where = listen_description(server)
    if options["adopt-fd"] is not None:
        AdoptedPortService(options["adopt-fd"], site, reactor, where,
                           factory=factory).setServiceParent(front)
        ParentWatch(reactor).setServiceParent(top)
    else:
        if not config.auth.enabled and not is_private(where):
            log.warn("sharqd listens on {where} without [auth]: anyone who reaches it "
                     "may enqueue, dequeue and delete queues (README, Security)",
                     where=where)
        http = HTTPService(endpoint, site, reactor, description=where, factory=factory)
        http.setServiceParent(front)
        if config.server.workers > 1:
            pool = WorkerPool(config.server.workers, config_args(options), http, reactor,
                              metrics_dir=folder)
            pool.setServiceParent(front)
            hangup.add(pool.relay_hangup)
    waiters.setServiceParent(front)
    return top
