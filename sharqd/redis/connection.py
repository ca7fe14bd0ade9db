"""
Every connection of sharqd to Redis, made one way: the command pool
(RedisService) and the pub/sub subscription (Subscription).

Each connection belongs to a Link, which makes it again whenever it is lost,
with a backoff capped at about 1 s (Twisted's ClientService).  On each new
connection the link sends the handshake (AUTH, SELECT, then a PING or the
PSUBSCRIBE) and the connection is used once every reply is in.  A handshake
that is refused or not answered drops that connection only; its link tries
again.  A reply watchdog drops a connection that waits longer than
[redis] timeout for a reply (its callers get RedisUnavailable), and an idle
connection sends a PING every `keepalive` seconds so one that died silently
is found.
"""

import random
from collections import deque
from itertools import count

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable
from sharqd.redis.resp import encode_command
from sharqd.sockets import DirectWriter

KEEPALIVE_SECONDS = 10.0

# Delay before connecting again after `attempt` failures in a row: 0.2, 0.4,
# 0.8, then 1 s (txredisapi's default reaches 10 s; a queue server should be
# back within a second or two of Redis), plus up to 0.1 s so the connections
# of a pool do not all knock at once.
BACKOFF = backoffPolicy(initialDelay=0.1, factor=2.0, maxDelay=1.0,
                        jitter=lambda: random.uniform(0, 0.1))

# Errors Redis answers while it cannot serve for now (restarting, busy, a
# replica, out of memory): the client should retry, so they map to 503.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN",
              "CLUSTERDOWN", "NOAUTH", "MISCONF")

_PING = encode_command((b"PING",))
_ASKING = encode_command((b"ASKING",))


class RedisRefused(RedisUnavailable):
    """Redis answered a transient error (_TRANSIENT) instead of a reply;
    `reply` is its text (the cluster client retries TRYAGAIN and
    CLUSTERDOWN)."""

    def __init__(self, message, reply):
        super().__init__(message)
        self.reply = reply


class RedisConnection(txredisapi.RedisProtocol):
    """
    One connection.  txredisapi's protocol serves for its reply parser
    (hiredis when installed); this is the one place sharqd relies on more
    than txredisapi's documented API, and tests/test_redis_connection.py
    (ProtocolContract) fails if an upgrade of txredisapi changes it:

    - its dataReceived calls replyReceived(reply) once per complete reply,
      in order; an error reply comes as a txredisapi.ResponseError value;
      with charset=None and convertNumbers=False bulk strings stay bytes.
    - connectionMade is replaced, not extended: txredisapi's sends AUTH and
      SELECT and, when one fails or times out, calls factory.stopTrying(),
      which ends reconnection for every connection of its pool (issue 8).
      The link does the handshake instead.
    - replyReceived is replaced: instead of txredisapi's reply queue with a
      Deferred, a timer and a callback chain per command (a large share of
      a request's CPU), one Deferred per command in a deque, answered in
      order (Redis answers in order), and a reply count for the watchdog.

    Commands are written on the transport's socket (sharqd/sockets.py) while
    nothing waits in the transport's buffer (see send).
    """

    writer = None  # a DirectWriter on the transport (connectionMade)

    def __init__(self, link, on_message=None):
        super().__init__(charset=None, convertNumbers=False)
        self.link = link
        self.on_message = on_message  # channel -> None, for a subscription
        self.pending = deque()  # a Deferred per reply still to come
        self.replies = 0
        self.mark = None   # (replies, waiting) as the watchdog last saw them
        self.since = 0.0   # and since when

    def connectionMade(self):
        # commands go on the socket at once (sharqd/sockets.py): a tenth of
        # an enqueue's CPU was the reactor turn and epoll_ctl calls of
        # transport.write
        self.writer = DirectWriter(self.transport)
        self.link.connected(self)

    def send(self, data):
        """Write one encoded command; a Deferred of its reply, failing with
        ResponseError for an error reply and with txredisapi.ConnectionError
        if the connection is lost first."""
        d = Deferred()
        self.pending.append(d)
        # once a command does not fit in the socket, it and every command
        # after it wait in the transport's buffer until Redis has answered
        # all of them (then the buffer is empty: Redis answers only what it
        # received; see replyReceived)
        self.writer.write(data)
        return d

    def replyReceived(self, reply):
        self.replies += 1
        if self.on_message is not None and type(reply) is list and \
                len(reply) == 4 and reply[0] == b"pmessage":
            self.on_message(reply[2])
            return
        try:
            d = self.pending.popleft()
        except IndexError:  # a reply nobody asked for: out of step
            self.transport.abortConnection()
            return
        if self.writer.direct is None and not self.pending:
            self.writer.resume()  # every command sent is answered
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(txredisapi.ConnectionError("Lost connection"))
        self.link.lost(self)


class Link(Factory):
    """One connection to Redis, made again whenever it is lost or its
    handshake fails; tells its owner when the connection is up and down."""

    noisy = False

    def __init__(self, owner, handshake, on_message=None):
        self.owner = owner
        self.handshake = handshake  # encoded commands, sent first on each connection
        self.on_message = on_message
        self.connection = None  # the current one, up or in its handshake
        self.failed = 0  # connections in a row lost before their handshake completed
        self.service = ClientService(owner.endpoint(), self, retryPolicy=self._delay,
                                     clock=owner.reactor)

    def buildProtocol(self, addr):
        return RedisConnection(self, self.on_message)

    def _delay(self, attempt):
        # ClientService counts failures only until TCP connects; handshakes
        # that keep failing must back off as well
        return BACKOFF(max(attempt, self.failed))

    def start(self):
        self.service.startService()

    def stop(self):
        return self.service.stopService()

    def connected(self, connection):
        self.connection = connection
        self.failed += 1  # until the handshake completes
        replies = [connection.send(command) for command in self.handshake]
        d = gatherResults(replies, consumeErrors=True)
        d.addCallbacks(self._handshake_done, self._handshake_failed,
                       callbackArgs=(connection,), errbackArgs=(connection,))

    def _handshake_done(self, _, connection):
        if connection is self.connection and self.owner.running:
            self.failed = 0
            self.owner.complaint = None
            self.owner.up(connection)

    def _handshake_failed(self, failure, connection):
        if isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        if failure.check(txredisapi.ConnectionError):
            return  # lost meanwhile: already dealt with
        self.drop(connection, f"refused the handshake: {failure.getErrorMessage()}")

    def lost(self, connection):
        if connection is self.connection:
            self.connection = None
        self.owner.down(connection)

    def drop(self, connection, problem):
        """Close a connection that cannot be used."""
        self.owner.complain(problem)
        self.owner.down(connection)
        connection.transport.abortConnection()

    def check(self, now, timeout, keepalive):
        """The watchdog: drop the connection if a reply has been awaited for
        `timeout` s with none coming in; PING it if quiet for `keepalive` s."""
        connection = self.connection
        if connection is None:
            return
        mark = (connection.replies, bool(connection.pending))
        if mark != connection.mark:
            connection.mark, connection.since = mark, now
        elif mark[1] and now - connection.since >= timeout:
            self.drop(connection, f"did not answer in {timeout} s")
        elif not mark[1] and now - connection.since >= keepalive:
            connection.send(_PING).addErrback(lambda _: None)


class _Connections(Service):
    """What the command pool and the subscription share: the endpoint, the
    handshake, the links and their watchdog."""

    log = Logger()
    size = 1  # links

    def __init__(self, config, reactor=None, keepalive=KEEPALIVE_SECONDS):
        """config is the [redis] section."""
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.keepalive = keepalive
        self.links = []
        self.complaint = None  # the last problem logged, until a connection is up
        self._watchdog = LoopingCall(self._check)
        self._watchdog.clock = reactor

    def describe(self):
        c = self.config
        if c.conn_type == "unix_sock":
            return f"unix:{c.unix_socket_path}"
        return f"{c.host}:{c.port}"

    def endpoint(self):
        c = self.config
        if c.conn_type == "unix_sock":
            return UNIXClientEndpoint(self.reactor, c.unix_socket_path, timeout=c.timeout)
        return HostnameEndpoint(self.reactor, c.host, c.port, timeout=c.timeout)

    def handshake(self):
        """The commands every new connection sends before it is used."""
        c = self.config
        commands = []
        if c.password:
            commands.append(encode_command((b"AUTH", c.password)))
        if c.db:
            commands.append(encode_command((b"SELECT", c.db)))
        return commands

    def complain(self, problem):
        """Log a problem once, not once per connection and attempt."""
        if problem != self.complaint:
            self.complaint = problem
            self.log.warn("Redis at {where} {problem}; reconnecting",
                          where=self.describe(), problem=problem)

    def startService(self):
        super().startService()
        self.links = [self.link() for _ in range(self.size)]
        for link in self.links:
            link.start()
        self._watchdog.start(min(0.25, self.config.timeout / 4), now=False)

    def stopService(self):
        super().stopService()
        if self._watchdog.running:
            self._watchdog.stop()
        links, self.links = self.links, []
        return gatherResults([link.stop() for link in links], consumeErrors=True)

    def _check(self):
        now = self.reactor.seconds()
        for link in self.links:
            link.check(now, self.config.timeout, self.keepalive)


class RedisService(_Connections):
    """The command pool: execute(*command) sends one command on a live
    connection and turns every way of not getting an answer into
    RedisUnavailable."""

    def __init__(self, config, poolsize=4, reactor=None, keepalive=KEEPALIVE_SECONDS):
        super().__init__(config, reactor, keepalive)
        self.size = poolsize
        self.live = []  # connections whose handshake completed
        self._turn = count()
        self._waiting = []
        # how long a command waits for a connection (startup, reconnect);
        # with the reply timeout the whole wait stays within timeout + 1 s
        self.connect_wait = min(1.0, config.timeout / 2)
        # on_error(kind) is told of each command that got no usable answer
        # (metrics): unreachable, no_answer (lost or timed out), refused
        self.on_error = lambda kind: None

    def link(self):
        # the PING proves the server answers before requests go there
        return Link(self, self.handshake() + [_PING])

    def up(self, connection):
        if not self.live:
            self.log.info("Connected to Redis at {where}", where=self.describe())
        self.live.append(connection)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def down(self, connection):
        if connection in self.live:
            self.live.remove(connection)
            if not self.live and self.running:
                self.log.warn("No connection to Redis at {where}; reconnecting",
                              where=self.describe())

    def stopService(self):
        self.live = []
        return super().stopService()

    def execute(self, *command):
        """Send one command on a live connection; Deferred of the reply."""
        live = self.live
        if live:
            # straight onto a live connection, round robin: one Deferred and
            # one callback per command, the watchdog instead of a timer each
            connection = live[next(self._turn) % len(live)]
            return connection.send(encode_command(command)).addErrback(self._failed)
        return self._when_live(self.execute, command)

    def _when_live(self, method, command):
        """method(*command) once a connection is up, or RedisUnavailable
        after connect_wait."""
        if not self.running:
            return fail(RedisUnavailable("sharqd is stopping."))
        waiter = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        waiter.addTimeout(self.connect_wait, self.reactor, self._not_reachable)
        return waiter.addCallback(lambda _: method(*command))

    def execute_asking(self, *command):
        """ASKING, then the command, on one connection (Redis Cluster: a
        slot being migrated to this node)."""
        live = self.live
        if not live:
            return self._when_live(self.execute_asking, command)
        connection = live[next(self._turn) % len(live)]
        connection.send(_ASKING).addErrback(lambda _: None)
        return connection.send(encode_command(command)).addErrback(self._failed)

    def execute_durable(self, *command):
        """The command, then WAIT on the same connection for
        [redis] wait_replicas replicas (at most wait_timeout ms); the
        command's reply once they have it, else RedisUnavailable."""
        live = self.live
        if not live:
            return self._when_live(self.execute_durable, command)
        c = self.config
        connection = live[next(self._turn) % len(live)]
        d = connection.send(encode_command(command)).addErrback(self._failed)
        acked = connection.send(encode_command((b"WAIT", c.wait_replicas, c.wait_timeout)))
        acked.addErrback(self._failed)
        return d.addCallbacks(self._confirmed, self._not_confirmed,
                              callbackArgs=(acked,), errbackArgs=(acked,))

    def _not_confirmed(self, failure, acked):
        acked.addErrback(lambda _: None)  # the command's own error tells it
        return failure

    def _confirmed(self, reply, acked):
        def check(replicas):
            if replicas < self.config.wait_replicas:
                raise RedisUnavailable(
                    f"Redis at {self.describe()} did the change but only {replicas} of "
                    f"{self.config.wait_replicas} replicas confirmed it within "
                    f"{self.config.wait_timeout} ms; it may be lost if this Redis "
                    f"fails now. Retrying is safe: once a replica has it, an enqueue "
                    f"already kept answers 409, a finish already done 404.")
            return reply
        return acked.addCallback(check)

    def _not_reachable(self, *_):
        self.on_error("unreachable")
        raise RedisUnavailable(
            f"Redis at {self.describe()} is not reachable; try again shortly.")

    def _failed(self, failure):
        """The error to raise for an error that took the place of a reply."""
        error = failure.value
        if isinstance(error, txredisapi.ConnectionError):
            self.on_error("no_answer")
            raise RedisUnavailable(
                f"Redis at {self.describe()} did not answer in time; try again shortly.")
        if isinstance(error, txredisapi.ResponseError) and \
                str(error).startswith(_TRANSIENT):
            self.on_error("refused")
            self.log.warn("Redis refused a command: {error}", error=error)
            raise RedisRefused(f"Redis cannot serve right now: {error}", str(error))
        return failure


class Subscription(_Connections):
    """A pattern subscription: on_message(channel) for each message on a
    channel that matches, on_live(True | False) when the subscription comes
    up or goes down (messages may have been missed meanwhile)."""

    def __init__(self, config, pattern, on_message, on_live, reactor=None,
                 keepalive=KEEPALIVE_SECONDS):
        super().__init__(config, reactor, keepalive)
        self.pattern = pattern
        self.on_message = on_message
        self.on_live = on_live
        self.connection = None

    @property
    def live(self):
        return self.connection is not None

    def link(self):
        subscribe = encode_command((b"PSUBSCRIBE", self.pattern))
        return Link(self, self.handshake() + [subscribe], self.on_message)

    def up(self, connection):
        self.connection = connection
        self.log.info("Subscribed to {pattern} at {where}",
                      pattern=self.pattern, where=self.describe())
        self.on_live(True)

    def down(self, connection):
        if connection is not self.connection:
            return
        self.connection = None
        if self.running:
            self.log.warn("Lost the Redis subscription to {pattern}; reconnecting",
                          pattern=self.pattern)
        self.on_live(False)

    def stopService(self):
        self.connection = None
        return super().stopService()
