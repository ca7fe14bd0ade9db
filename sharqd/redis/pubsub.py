"""
The one Redis pub/sub connection of a sharqd process, as a Service.

The queue scripts PUBLISH on `<prefix>:{<queue_type>}:ready` when they make
a type ready earlier (see common.lua, notify_ready).  This service holds a
pattern subscription to `<prefix>:{*}:ready`, so every sharqd process on the
same Redis hears of every such change, and passes the queue type on to a
listener (sharqd.queue.waiters.Waiters): `notify(queue_type)` per message,
`subscribed(True | False)` when the subscription comes up or goes down.
It reconnects by itself; a keep-alive PING finds a connection that died
silently.
"""

import txredisapi
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

KEEPALIVE_SECONDS = 10.0


def channel_pattern(prefix):
    return f"{prefix}:{{*}}:ready"


def queue_type_of(prefix, channel):
    """The queue type a ready channel names, or None."""
    if isinstance(channel, bytes):
        channel = channel.decode("utf-8", "replace")
    head, tail = f"{prefix}:{{", "}:ready"
    if channel.startswith(head) and channel.endswith(tail):
        return channel[len(head):-len(tail)]
    return None


class _Subscriber(txredisapi.SubscriberProtocol):

    def connectionMade(self):
        d = super().connectionMade()  # AUTH first, when there is a password
        d.addCallback(self._subscribe)
        return d

    def _subscribe(self, _):
        if not self._ready:
            return None  # AUTH failed: txredisapi closes the connection
        d = self.psubscribe(self.factory.pattern)
        d.addCallbacks(self._subscribed, self._refused)
        return d

    def _subscribed(self, _):
        self.factory.service._up(self)

    def _refused(self, failure):
        self.factory.service.log.warn("Redis refused PSUBSCRIBE: {error}",
                                      error=failure.getErrorMessage())
        self.transport.loseConnection()

    def messageReceived(self, pattern, channel, message):
        self.factory.service._message(channel)

    def connectionLost(self, why):
        super().connectionLost(why)
        self.factory.service._down(self)


class _Factory(txredisapi.SubscriberFactory):
    protocol = _Subscriber
    # back within a second or two of Redis, as the command pool
    initialDelay = 0.2
    maxDelay = 1

    def __init__(self, service, pattern, password):
        super().__init__(isLazy=True)
        self.service = service
        self.pattern = pattern
        self.password = password or None
        self.charset = None  # channels as bytes: no decoding surprises


class NotifyService(Service):
    log = Logger()

    def __init__(self, config, key_prefix, listener, reactor=None,
                 keepalive=KEEPALIVE_SECONDS):
        """config is the [redis] section; listener has notify(queue_type)
        and subscribed(live)."""
        self.config = config
        self.prefix = key_prefix
        self.listener = listener
        self.reactor = reactor
        self.keepalive = keepalive
        self.factory = None
        self.connection = None
        self._ping = None

    def _reactor(self):
        if self.reactor is not None:
            return self.reactor
        from twisted.internet import reactor
        return reactor

    def _endpoint(self):
        reactor = self._reactor()
        c = self.config
        if c.conn_type == "unix_sock":
            return endpoints.UNIXClientEndpoint(reactor, c.unix_socket_path,
                                                timeout=c.timeout)
        return endpoints.HostnameEndpoint(reactor, c.host, c.port, timeout=c.timeout)

    def startService(self):
        super().startService()
        self.factory = _Factory(self, channel_pattern(self.prefix), self.config.password)
        self.factory.startConnecting(self._endpoint())
        self._ping = LoopingCall(self._keepalive)
        self._ping.clock = self._reactor()
        self._ping.start(self.keepalive, now=False)

    def stopService(self):
        super().stopService()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        factory, self.factory = self.factory, None
        self.connection = None
        if factory is not None:
            return factory.disconnect()

    @property
    def live(self):
        return self.connection is not None

    def _up(self, connection):
        if self.factory is None:
            return
        self.connection = connection
        self.log.info("Subscribed to {pattern} for long-poll",
                      pattern=self.factory.pattern)
        self.listener.subscribed(True)

    def _down(self, connection):
        if self.connection is not connection:
            return
        self.connection = None
        if self.running:
            self.log.warn("Lost the Redis subscription; long-poll waiters re-check "
                          "every second until it is back")
        self.listener.subscribed(False)

    def _message(self, channel):
        queue_type = queue_type_of(self.prefix, channel)
        if queue_type is not None:
            self.listener.notify(queue_type)

    def _keepalive(self):
        connection = self.connection
        if connection is None:
            return
        try:
            d = connection.execute_command("PING")
        except txredisapi.ConnectionError:
            return
        d.addTimeout(self.config.timeout, self._reactor())
        d.addErrback(self._no_pong, connection)

    def _no_pong(self, failure, connection):
        if connection is self.connection:
            self.log.warn("Redis subscription did not answer PING: {error}; reconnecting",
                          error=failure.getErrorMessage())
            connection.transport.abortConnection()
