"""
The Redis connection pool as a Service: connects in startService, reconnects
by itself, and turns every way of not getting an answer into RedisUnavailable.
"""

from itertools import count

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import fail
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable

# Errors Redis answers while it cannot serve for now (restarting, busy, a
# replica, out of memory): the client should retry, so they map to 503.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN",
              "CLUSTERDOWN", "NOAUTH", "MISCONF")


class RedisService(Service):
    log = Logger()

    def __init__(self, config, poolsize=4):
        self.config = config
        self.poolsize = poolsize
        self.factory = None
        self._turn = count()

    def describe(self):
        c = self.config
        if c.conn_type == "unix_sock":
            return f"unix:{c.unix_socket_path}"
        return f"{c.host}:{c.port}"

    def startService(self):
        super().startService()
        c = self.config
        options = dict(dbid=c.db, poolsize=self.poolsize, reconnect=True,
                       charset=None, password=c.password or None,
                       connectTimeout=c.timeout, replyTimeout=c.timeout,
                       convertNumbers=False)
        if c.conn_type == "unix_sock":
            handler = txredisapi.lazyUnixConnectionPool(c.unix_socket_path, **options)
        else:
            handler = txredisapi.lazyConnectionPool(c.host, c.port, **options)
        self.factory = handler._factory
        # the default backoff reaches 10 s; a queue server should be back
        # within a second or two of Redis
        self.factory.maxDelay = 1
        self.factory.initialDelay = 0.2
        self.log.info("Connecting to Redis at {where}", where=self.describe())

    def stopService(self):
        super().stopService()
        factory, self.factory = self.factory, None
        if factory is not None:
            return factory.disconnect()

    def execute(self, *command):
        """Send one command on a live connection; Deferred of the reply."""
        connection = self._pick()
        if connection is None:
            return fail(RedisUnavailable(
                f"Redis at {self.describe()} is not reachable; try again shortly."))
        try:
            d = connection.execute_command(*command)
        except txredisapi.ConnectionError:
            return fail(RedisUnavailable())
        return d.addErrback(self._translate)

    def _pick(self):
        # round robin over the connections that are up, without the
        # Deferred hops of txredisapi's pool wrapper
        pool = self.factory.pool if self.factory is not None else ()
        for _ in range(len(pool)):
            connection = pool[next(self._turn) % len(pool)]
            if connection.connected:
                return connection
        return None

    def _translate(self, failure):
        if failure.check(txredisapi.ConnectionError):  # timeouts included
            raise RedisUnavailable(
                f"Redis at {self.describe()} did not answer in time; try again shortly.")
        if failure.check(txredisapi.ResponseError) and \
                str(failure.value).startswith(_TRANSIENT):
            self.log.warn("Redis refused a command: {error}", error=failure.value)
            raise RedisUnavailable(f"Redis cannot serve right now: {failure.value}")
        return failure
