"""
twisted.web plumbing under the Klein app: a request that refuses oversized
bodies before buffering them and answers malformed requests in JSON, a site
with its own access log, and listening services that let in-flight requests
finish when they stop.
"""

import json
import os
import socket
import time
from urllib.parse import unquote_to_bytes

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, combinedLogFormatter, datetimeToLogString
from twisted.web.server import Request, Site
from zope.interface import directlyProvides, providedBy

DRAIN_SECONDS = 10  # how long a stopping server waits for in-flight requests
messages = Logger()  # sharqd's own (Site.log writes the access log)
JSON = b"application/json"


def json_failure(message):
    return json.dumps({"status": "failure", "message": message}).encode()


def raw_answer(status, reason, message):
    """A whole HTTP/1.1 answer that closes the connection, for the cases
    where no Request can answer (the request could not be parsed)."""
    body = json_failure(message)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason, len(body), body))


def valid_host(host):
    """Whether a Host header is a name werkzeug's routing accepts: UTF-8,
    each label of the name (before any ":port") 1 to 63 characters."""
    try:
        host.decode("utf-8").partition(":")[0].encode("idna")
    except UnicodeError:
        return False
    return True


class SharqRequest(Request):
    log = Logger()
    _too_large = False
    _received = 0
    counted_in = None  # the site, while the request counts as in flight
    gone = False  # the client hung up before its answer
    route = None  # the route template that answers, when known early (metrics)
    began = None  # time.monotonic() when it was routed

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
        # counted in flight until finished or the client is gone, for the
        # drain on stop (finish and connectionLost below)
        self.counted_in = self.channel.site
        self.counted_in.request_started()
        self.began = time.monotonic()
        problem = self._unservable()
        if problem is not None:
            self.answer_failure(400, problem)
            return
        super().process()

    def finish(self):
        super().finish()
        self._ended()

    def connectionLost(self, reason):
        self.gone = not self.finished  # the client hung up before its answer
        super().connectionLost(reason)
        self._ended()

    def _ended(self):
        if self.counted_in is not None:
            self.counted_in.request_ended(self)
            self.counted_in = None

    def _unservable(self):
        """Why the routes cannot serve this request, or None.  Klein and
        werkzeug would answer these with plain text or a 500."""
        path = self.path
        if not path.startswith(b"/"):
            return "The request target must be a path starting with `/`."
        if not path.isascii() or b"%" in path:
            try:
                unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                return "The URL path is not valid UTF-8."
        host = self.getHeader(b"host")
        if host is not None and host != self.channel.good_host:
            if not valid_host(host):
                return "The Host header is not a valid host name."
            self.channel.good_host = host  # a connection sends the same one
        return None

    def answer_failure(self, status, message):
        self.setResponseCode(status)
        self.setHeader(b"content-type", JSON)
        self.write(json_failure(message))
        self.finish()

    def processingFailed(self, reason):
        """An error no handler caught: 500 JSON, the detail in the log only
        (twisted.web would answer an HTML page)."""
        self.log.failure("Unexpected error answering {method} {uri}", reason,
                         method=self.method, uri=self.uri)
        if self.gone or self.finished:
            return reason
        if self.startedWriting:  # too late for a status: just end it
            self.finish()
            return reason
        self.answer_failure(500, "Internal server error; see the server log.")
        return reason

    def _refuse(self, size, limit):
        """Answer 413 and hang up without reading the rest of the body."""
        self._too_large = True
        # no "100 Continue" for a body we refuse
        self.requestHeaders.removeHeader(b"expect")
        self.channel.transport.write(raw_answer(
            413, b"Request Entity Too Large",
            f"Request body of {size} bytes is larger than "
            f"max_request_size ({limit} bytes)."))
        self.channel.loseConnection()


class SharqChannel(HTTPChannel):
    """An HTTP/1.1 connection that learns its two addresses once, not on
    every request (a getsockname call and address objects each time), and
    answers in JSON what twisted.web refuses without a body."""

    _host = _peer = None
    good_host = None  # the last Host header found valid on this connection

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self):
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def makeConnection(self, transport):
        super().makeConnection(_JSONBadRequest(transport))

    def lineLengthExceeded(self, line):
        # LineReceiver would hang up without a word
        self.transport.write(raw_answer(
            400, b"Bad Request",
            f"A request line or header is longer than {self.MAX_LENGTH} bytes."))
        self.transport.loseConnection()


# twisted.web's own answer to a request it cannot parse: no body at all
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_JSON_400 = raw_answer(
    400, b"Bad Request",
    "The request is not valid HTTP/1.1: check the request line, the header "
    "lines (name: value), Content-Length and the chunked body; the header "
    "section must stay within 16384 bytes.")


class _JSONBadRequest:
    """The transport of a SharqChannel: sends twisted.web's bare 400 (a
    malformed request line, header or chunked body) as JSON; everything
    else goes to the connection unchanged.  It provides what the
    connection provides, with the methods of ITCPTransport, IPushProducer,
    ISystemHandle and ISSLTransport written out: a __getattr__ fallback (as
    in ProtocolWrapper) would slow down every write."""

    def __init__(self, transport):
        directlyProvides(self, providedBy(transport))
        self.transport = transport

    def write(self, data):
        self.transport.write(_JSON_400 if data == _BARE_400 else data)

    def writeSequence(self, data):
        self.transport.writeSequence(data)

    def loseConnection(self):
        self.transport.loseConnection()

    def abortConnection(self):
        self.transport.abortConnection()

    def loseWriteConnection(self):
        self.transport.loseWriteConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def getTcpNoDelay(self):
        return self.transport.getTcpNoDelay()

    def setTcpNoDelay(self, enabled):
        self.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self):
        return self.transport.getTcpKeepAlive()

    def setTcpKeepAlive(self, enabled):
        self.transport.setTcpKeepAlive(enabled)

    def getHandle(self):
        return self.transport.getHandle()

    def getPeerCertificate(self):
        return self.transport.getPeerCertificate()

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()

    @property
    def disconnecting(self):
        return self.transport.disconnecting


class SharqSite(Site):
    requestFactory = SharqRequest
    protocol = SharqChannel  # plain HTTP/1.1: sharqd does not offer HTTP/2
    noisy = False

    def __init__(self, resource, max_request_size, access_log=None,
                 log_formatter=combinedLogFormatter, observe=None, **kwargs):
        # Bodies are JSON, never forms: skip twisted.web's parsing of the
        # Content-Type header (through the email package) on every POST,
        # which alone cost as much as the rest of an enqueue.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_request_size = max_request_size
        self.access_log_path = access_log
        self.log_formatter = log_formatter
        self.access_log = None  # the open file, while the site listens
        self._log_second = None
        self._log_time = None
        self.in_flight = 0
        self._idle_waiters = []
        # observe(request, seconds) is told of every answered request (metrics)
        self.observe = observe

    # ---- requests in flight, for the drain on stop (and the metrics)

    def request_started(self):
        self.in_flight += 1

    def request_ended(self, request=None):
        self.in_flight -= 1
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
        if self.observe is not None and request is not None and request.finished \
                and not request.gone:
            self.observe(request, time.monotonic() - request.began)

    def when_idle(self):
        """A Deferred that fires once no request is in flight."""
        if not self.in_flight:
            return succeed(None)
        d = Deferred()
        self._idle_waiters.append(d)
        return d

    # ---- the access log: our own file, opened with O_APPEND so logrotate
    # and several worker processes can share it, one write per line

    def startFactory(self):
        super().startFactory()
        self._open_log()

    def stopFactory(self):
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        super().stopFactory()

    def _open_log(self):
        if self.access_log_path:
            self.access_log = open(self.access_log_path, "a", 1, newline="\n")

    def reopen_log(self):
        """Reopen the access log, after logrotate renamed it (SIGHUP)."""
        if self.access_log is not None:
            self.access_log.close()
            self._open_log()
            messages.info("Reopened the access log {path}", path=self.access_log_path)

    def log(self, request):
        if self.access_log is None:
            return
        second = int(self.reactor.seconds())
        if second != self._log_second:
            self._log_second = second
            self._log_time = datetimeToLogString(second)
        self.access_log.write(self.log_formatter(self._log_time, request) + "\n")


class HTTPService(Service):
    """Listens on an endpoint; on stop, stops listening, then drains."""

    log = Logger()

    def __init__(self, endpoint, site, reactor, description="",
                 drain_seconds=DRAIN_SECONDS):
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.description = description
        self.drain_seconds = drain_seconds
        self.port = None
        self.listening = None

    def privilegedStartService(self):
        # listen before twistd drops privileges (a port below 1024)
        super().privilegedStartService()
        self.listening = self.endpoint.listen(self.site)
        failed = []
        self.listening.addCallbacks(self._listening, failed.append)
        # a port we cannot listen on must stop startup, not just be logged
        if failed:
            raise SystemExit(f"sharqd: cannot listen on {self.description}: "
                             f"{failed[0].getErrorMessage()}")
        self.listening.addErrback(self._cannot_listen)

    def _listening(self, port):
        self.port = port
        self.log.info("sharqd listening on {where}", where=self.description)
        return port

    def _cannot_listen(self, failure):
        self.log.critical("sharqd: cannot listen on {where}: {error}",
                          where=self.description, error=failure.getErrorMessage())
        self.reactor.stop()

    def startService(self):
        if self.listening is None:
            self.privilegedStartService()
        super().startService()

    async def _stop(self):
        if self.listening is not None and not self.listening.called:
            self.listening.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            await maybeDeferred(port.stopListening)
        if self.site.in_flight:
            self.log.info("Waiting for {n} in-flight requests", n=self.site.in_flight)
            idle = self.site.when_idle()
            idle.addTimeout(self.drain_seconds, self.reactor)
            try:
                await idle
            except Exception:
                self.log.warn("{n} requests still in flight after {s} s; stopping anyway",
                              n=self.site.in_flight, s=self.drain_seconds)

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class AdoptedPortService(HTTPService):
    """A worker process: serves on a listening socket its parent opened."""

    def __init__(self, fd, site, reactor, description=""):
        super().__init__(None, site, reactor, description)
        self.fd = fd

    def privilegedStartService(self):
        Service.privilegedStartService(self)  # nothing to bind: the parent did

    def startService(self):
        sock = socket.socket(fileno=self.fd)  # only to learn the family
        family = sock.family
        sock.detach()
        port = self.reactor.adoptStreamPort(self.fd, family, self.site)
        os.close(self.fd)  # adoptStreamPort listens on a duplicate
        self.listening = succeed(port)
        self._listening(port)
        Service.startService(self)
