"""
The Redis connection pool as a Service: connects in startService, reconnects
by itself, and turns every way of not getting an answer into RedisUnavailable.
"""

from itertools import count

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable
from sharqd.redis.resp import encode_command

# Errors Redis answers while it cannot serve for now (restarting, busy, a
# replica, out of memory): the client should retry, so they map to 503.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN",
              "CLUSTERDOWN", "NOAUTH", "MISCONF")


class _PoolFactory(txredisapi.RedisFactory):
    """txredisapi's pool, telling the service when a connection is ready."""

    def __init__(self, service, **kwargs):
        super().__init__(**kwargs)
        self.service = service

    def addConnection(self, conn):
        super().addConnection(conn)
        self.service._connection_ready()


class RedisService(Service):
    log = Logger()

    def __init__(self, config, poolsize=4, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.poolsize = poolsize
        self.reactor = reactor
        self.factory = None
        self._turn = count()
        self._waiting = []
        # how long a command waits for a connection (startup, reconnect);
        # with the reply timeout the whole wait stays within timeout + 1 s
        self.connect_wait = min(1.0, config.timeout / 2)
        self._watchdog = LoopingCall(self._check_replies)
        self._watchdog.clock = reactor
        self._oldest = {}  # connection -> (oldest reply awaited, seen since)
        # on_error(kind) is told of each command that got no usable answer
        # (metrics): unreachable, timeout, connection_lost, refused
        self.on_error = lambda kind: None

    def describe(self):
        c = self.config
        if c.conn_type == "unix_sock":
            return f"unix:{c.unix_socket_path}"
        return f"{c.host}:{c.port}"

    def startService(self):
        super().startService()
        c = self.config
        self.factory = _PoolFactory(
            self, uuid=self.describe(), dbid=c.db, poolsize=self.poolsize, isLazy=True,
            charset=None, password=c.password or None, replyTimeout=c.timeout,
            convertNumbers=False)
        self._watchdog.start(min(0.25, c.timeout / 4), now=False)
        # the default backoff reaches 10 s; a queue server should be back
        # within a second or two of Redis
        self.factory.maxDelay = 1
        self.factory.initialDelay = 0.2
        if c.conn_type == "unix_sock":
            endpoint = UNIXClientEndpoint(self.reactor, c.unix_socket_path, timeout=c.timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, c.host, c.port, timeout=c.timeout)
        self.factory.startConnecting(endpoint)
        self.log.info("Connecting to Redis at {where}", where=self.describe())

    def stopService(self):
        super().stopService()
        if self._watchdog.running:
            self._watchdog.stop()
        factory, self.factory = self.factory, None
        if factory is not None:
            return factory.disconnect()

    def execute(self, *command):
        """Send one command on a live connection; Deferred of the reply."""
        connection = self._pick()
        if connection is not None:
            return self._send(connection, command)
        if self.factory is None:
            return fail(RedisUnavailable("sharqd is stopping."))
        waiter = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        waiter.addTimeout(self.connect_wait, self.reactor, self._not_reachable)
        return waiter.addCallback(lambda _: self.execute(*command))

    def _not_reachable(self, *_):
        self.on_error("unreachable")
        raise RedisUnavailable(
            f"Redis at {self.describe()} is not reachable; try again shortly.")

    def _connection_ready(self):
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _send(self, connection, command):
        # Straight onto txredisapi's protocol and reply queue: its
        # execute_command adds a Deferred and a timer per command, a large
        # share of the CPU of a request; the watchdog below replaces the timers.
        connection.transport.write(encode_command(command))
        return connection.replyQueue.get().addCallback(self._reply)

    def _reply(self, reply):
        # txredisapi queues an error reply, or the loss of the connection
        # (the watchdog's included), as a value in place of the reply
        if isinstance(reply, Exception):
            raise self._translate(reply)
        return reply

    def _check_replies(self):
        """Drop a connection whose oldest awaited reply is older than timeout;
        its callers get RedisUnavailable and the pool reconnects."""
        now = self.reactor.seconds()
        pool = self.factory.pool if self.factory is not None else ()
        oldest = {}
        for connection in pool:
            waiting = connection.replyQueue.waiting
            if not waiting:
                continue
            head = waiting[0]
            seen_head, since = self._oldest.get(connection, (None, now))
            if seen_head is not head:
                since = now
            elif now - since >= self.config.timeout:
                self.log.warn("Redis at {where} did not answer in {t} s; reconnecting",
                              where=self.describe(), t=self.config.timeout)
                self.on_error("timeout")
                connection.transport.abortConnection()
                continue
            oldest[connection] = (head, since)
        self._oldest = oldest

    def _pick(self):
        # round robin over the connections that are up, without the
        # Deferred hops of txredisapi's pool wrapper
        pool = self.factory.pool if self.factory is not None else ()
        for _ in range(len(pool)):
            connection = pool[next(self._turn) % len(pool)]
            if connection.connected:
                return connection
        return None

    def _translate(self, error):
        """The error to raise for an error that took the place of a reply."""
        if isinstance(error, txredisapi.ConnectionError):
            self.on_error("connection_lost")
            return RedisUnavailable(
                f"Redis at {self.describe()} did not answer in time; try again shortly.")
        if isinstance(error, txredisapi.ResponseError) and \
                str(error).startswith(_TRANSIENT):
            self.on_error("refused")
            self.log.warn("Redis refused a command: {error}", error=error)
            return RedisUnavailable(f"Redis cannot serve right now: {error}")
        return error
