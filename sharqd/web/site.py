"""
twisted.web plumbing under the Klein app: a request that refuses oversized
bodies before buffering them, and a listening service that lets in-flight
requests finish when it stops.
"""

import json
import os
import signal
import socket
import time
from urllib.parse import unquote_to_bytes

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

DRAIN_SECONDS = 10  # how long a stopping server waits for in-flight requests


class SharqRequest(Request):
    _too_large = False
    _received = 0
    route = None  # the route template that answers, when known early

    def gotLength(self, length):
        limit = self.channel.site.max_request_size
        if length is not None and length > limit:
            self._refuse(length, limit)
        super().gotLength(None if self._too_large else length)

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received += len(data)
        limit = self.channel.site.max_request_size
        if self._received > limit:
            self._refuse(self._received, limit)  # chunked: known only now
            return
        super().handleContentChunk(data)

    def getRequestHostname(self):
        # a unix socket has no host name to fall back on without a Host header
        if self.getHeader(b"host") is None and not hasattr(self.getHost(), "host"):
            return b"localhost"
        return super().getRequestHostname()

    def requestReceived(self, command, path, version):
        if not self._too_large:
            super().requestReceived(command, path, version)

    def process(self):
        # Klein would answer a non-UTF-8 path with plain text; keep it JSON
        if b"%" in self.path:
            try:
                unquote_to_bytes(self.path).decode("utf-8")
            except UnicodeDecodeError:
                self.setResponseCode(400)
                self.setHeader(b"content-type", b"application/json")
                self.write(b'{"status": "failure", "message": '
                           b'"The URL path is not valid UTF-8."}')
                self.finish()
                return
        super().process()

    def _refuse(self, size, limit):
        """Answer 413 and hang up without reading the rest of the body."""
        self._too_large = True
        # no "100 Continue" for a body we refuse
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({
            "status": "failure",
            "message": f"Request body of {size} bytes is larger than "
                       f"max_request_size ({limit} bytes)."}).encode()
        self.channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.channel.loseConnection()


class SharqChannel(HTTPChannel):
    """An HTTP/1.1 connection that learns its two addresses once, not on
    every request (a getsockname call and address objects each time)."""

    _host = _peer = None

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self):
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer


class SharqSite(Site):
    requestFactory = SharqRequest
    protocol = SharqChannel  # plain HTTP/1.1: sharqd does not offer HTTP/2
    noisy = False

    def __init__(self, resource, max_request_size, observe=None, **kwargs):
        # Bodies are JSON, never forms: skip twisted.web's parsing of the
        # Content-Type header (through the email package) on every POST,
        # which alone cost as much as the rest of an enqueue.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        # without a logPath twisted.web would send the access log to the
        # main log; the config says no access log then
        self.access_log = self.logPath is not None
        self.max_request_size = max_request_size
        self.in_flight = 0
        self._idle_waiters = []
        # observe(request, seconds) is told of every answered request (metrics)
        self.observe = observe

    def getResourceFor(self, request):
        self.in_flight += 1
        request.notifyFinish().addBoth(self._request_done, request, time.monotonic())
        return super().getResourceFor(request)

    def _request_done(self, _, request, started):
        self.in_flight -= 1
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
        if self.observe is not None:
            self.observe(request, time.monotonic() - started)

    def _openLogFile(self, path):
        # Site's default LogFile rotates by itself at 1 MB and writes at its
        # own offset; O_APPEND line by line is what logrotate and several
        # worker processes sharing the file need
        return open(path, "a", 1, newline="\n")

    def log(self, request):
        if self.access_log:
            super().log(request)

    def reopen_log(self):
        """Reopen the access log, after logrotate renamed it (SIGHUP)."""
        if self.access_log and self._logFile is not None:
            self._logFile.close()
            self._logFile = self._openLogFile(self.logPath)

    def when_idle(self):
        """A Deferred that fires once no request is in flight."""
        if not self.in_flight:
            return succeed(None)
        d = Deferred()
        self._idle_waiters.append(d)
        return d


class HTTPService(StreamServerEndpointService):
    """Listens on an endpoint; on stop, stops listening, then drains."""

    log = Logger()
    # a port we cannot listen on must stop startup, not just be logged
    _raiseSynchronously = True

    def __init__(self, endpoint, site, clock, description="",
                 drain_seconds=DRAIN_SECONDS):
        super().__init__(endpoint, site)
        self.site = site
        self.clock = clock
        self.description = description
        self.drain_seconds = drain_seconds

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except Exception as e:
            raise SystemExit(f"sharqd: cannot listen on {self.description}: {e}")
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        self.log.info("sharqd listening on {where}", where=self.description)
        return port

    def startService(self):
        super().startService()
        reopen = self.site.reopen_log
        signal.signal(signal.SIGHUP, lambda *_: self.clock.callFromThread(reopen))

    async def _stop(self):
        await super().stopService()
        if self.site.in_flight:
            self.log.info("Waiting for {n} in-flight requests", n=self.site.in_flight)
            idle = self.site.when_idle()
            idle.addTimeout(self.drain_seconds, self.clock)
            try:
                await idle
            except Exception:
                self.log.warn("{n} requests still in flight after {s} s; stopping anyway",
                              n=self.site.in_flight, s=self.drain_seconds)

    def stopService(self):
        return Deferred.fromCoroutine(self._stop())


class AdoptedPortService(HTTPService):
    """A worker process: serves on a listening socket its parent opened."""

    def __init__(self, fd, site, clock, description=""):
        super().__init__(None, site, clock, description)
        self.fd = fd

    def privilegedStartService(self):
        pass  # nothing to bind: the parent did

    def startService(self):
        sock = socket.socket(fileno=self.fd)  # only to learn the family
        family = sock.family
        sock.detach()
        port = self.clock.adoptStreamPort(self.fd, family, self.site)
        os.close(self.fd)  # adoptStreamPort listens on a duplicate
        self._waitingForPort = succeed(port)
        self._listening(port)
        HTTPService.startService(self)
