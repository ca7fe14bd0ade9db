"""
twisted.web plumbing under the Klein app: a request that refuses oversized
bodies before buffering them and answers malformed requests in JSON,
connections with bounded patience and number, a site with its own access
log, and listening services that let in-flight requests finish when they
stop.
"""

import json
import os
import resource
import socket
import tempfile
import time
from io import BytesIO
from urllib.parse import unquote_to_bytes

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import (HTTPChannel, combinedLogFormatter, datetimeToLogString,
                              datetimeToString)
from twisted.python.failure import Failure
from twisted.web.server import Request, Site
from twisted.web.server import version as SERVER_VERSION
from zope.interface import directlyProvides, providedBy

from sharqd.sockets import DirectWriter

DRAIN_SECONDS = 10  # how long a stopping server waits for in-flight requests
FD_RESERVE = 256    # descriptors kept for Redis, logs and refused connections
messages = Logger()  # sharqd's own (Site.log writes the access log)
JSON = b"application/json"


def json_failure(message):
    return json.dumps({"status": "failure", "message": message}).encode()


def raw_answer(status, reason, message, headers=b""):
    """A whole HTTP/1.1 answer that closes the connection, for the cases
    where no Request can answer (the request could not be parsed, or its
    body is refused unread).  headers: more header lines, each ending in
    CRLF."""
    body = json_failure(message)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason, headers, len(body), body))


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
    # a Deferred: the connection's next request is not read before it fires
    read_next_after = None
    gone = False  # the client hung up before its answer
    route = None  # the route template that answers, when known early (metrics)
    began = None  # time.monotonic() when it was routed
    # the hot path's Deferred of the answer: cancelled if the client hangs
    # up first (one attribute instead of a notifyFinish Deferred each)
    working = None
    # the request line's parts, known before the body
    target_method = target = target_version = b""

    def gotLength(self, length):
        site = self.channel.site
        if length is not None and length > site.max_request_size:
            self._refuse(length, site.max_request_size)
        elif length != 0 and site.admit is not None:
            self._admit(site.admit)
        super().gotLength(None if self._too_large else length)

    def _admit(self, admit):
        """Refuse a request with a body before reading it when its headers
        already say it will be refused (no or an unknown token): an
        unauthenticated client cannot make sharqd buffer bodies."""
        path = self.target.partition(b"?")[0]
        refusal = admit(self.target_method, path, self.requestHeaders)
        if refusal is None:
            return
        status, reason, message, headers = refusal
        self._too_large = True  # read no more of it
        self.requestHeaders.removeHeader(b"expect")
        answer = raw_answer(status, reason, message, headers)
        self.channel.transport.write(answer)
        self.channel.loseConnection()
        # in the access log like any answered request: refusals are what
        # an operator looks for there
        self.method, self.uri, self.clientproto = (
            self.target_method, self.target, self.target_version)
        self.code, self.sentLength = status, len(answer.partition(b"\r\n\r\n")[2])
        self.channel.site.log(self)

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
        self.site = site = self.channel.site
        self.counted_in = site
        site.request_started()
        self.began = time.monotonic()
        problem = self._unservable()
        if problem is not None:
            self.answer_failure(400, problem)
            return
        # twisted.web's Request.process, but without the Server and Date
        # headers (SharqChannel.writeHeaders writes them); "*" is refused
        # above and none of sharqd's resources encodes its answers (no
        # EncodingResourceWrapper)
        self.prepath = []
        self.postpath = self.path[1:].split(b"/")
        # find, not `in`: a bytes `in` first tries its operand as an integer
        # and raises and clears a TypeError inside, on every call
        if self.path.find(b"%") >= 0:  # else unquoting changes nothing
            self.postpath = list(map(unquote_to_bytes, self.postpath))
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def finish(self):
        channel = self.channel  # None once the client is gone
        super().finish()
        self._ended()
        if self.read_next_after is not None and not channel.transport.disconnecting:
            # the client's next request waits in its socket meanwhile
            channel.transport.pauseProducing()
            self.read_next_after.addCallback(_resume, channel.transport)

    def connectionLost(self, reason):
        self.gone = not self.finished  # the client hung up before its answer
        super().connectionLost(reason)
        self._ended()
        if self.gone and self.working is not None:
            self.working.cancel()  # the work done for it, as Klein does

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
        if not path.isascii() or path.find(b"%") >= 0:
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


def _resume(_, transport):
    transport.resumeProducing()


class SharqChannel(HTTPChannel):
    """An HTTP/1.1 connection that learns its two addresses once, not on
    every request (a getsockname call and address objects each time),
    answers in JSON what twisted.web refuses without a body, and is dropped
    when its request headers take longer than the site's header_timeout,
    or its request body longer than body_timeout after them.  (The idle
    timeout alone would not do: every byte restarts it, so one header line
    every 20 s would hold a connection forever.)

    Its clocks (headers, body, idle) are times noted as things happen and
    read by the site's sweep (SharqSite.sweep), not a timer started and
    cancelled on every request: those cost a tenth of a request's CPU."""

    _host = _peer = None
    good_host = None  # the last Host header found valid on this connection
    _header_since = None  # when the headers of the next request began
    _body_since = None  # when the headers of a request whose body is late came
    _active = 0.0  # when a byte last came in, or the last answer went out
    _headers_done = False
    _in_request = False  # the request line of the current request was seen
    _awaiting_body = False  # headers in, body not complete yet

    def connectionMade(self):
        super().connectionMade()
        # a connection that says nothing counts too
        self._header_since = self._active = self.site.reactor.seconds()

    def dataReceived(self, data):
        self._active = now = self.site.reactor.seconds()
        if self._header_since is None and not self._headers_done:
            self._header_since = now  # the first byte of the next request
        super().dataReceived(data)
        # a body that came with its headers (the usual case) needs no clock
        if self._awaiting_body and self._body_since is None:
            self._body_since = now

    def allHeadersReceived(self):
        self._headers_done = True
        self._header_since = None
        super().allHeadersReceived()
        self._awaiting_body = self.length != 0 and not self.transport.disconnecting

    def allContentReceived(self):
        self._in_request = self._awaiting_body = False
        self._body_since = None
        super().allContentReceived()

    def writeHeaders(self, version, code, reason, headers):
        """twisted.web's, with the Server and Date lines every answer
        carries written here rather than set on each request (two header
        sets and their checks per request); held by the transport, to go
        out with the body."""
        lines = [version, b" ", code, b" ", reason, b"\r\n", self.site.common_lines()]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        self.transport.held = b"".join(lines)

    def requestDone(self, request):
        self.transport.flush()  # an answer without a body
        self._headers_done = False  # the next request has its own clock
        self._active = self.site.reactor.seconds()
        super().requestDone(request)

    def connectionLost(self, reason):
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def check(self, now):
        """The sweep: drop the connection if one of its clocks ran out.
        Idle means no request in flight: a long-poll is never idle."""
        site = self.site
        if self._header_since is not None and now - self._header_since >= site.header_timeout:
            self._too_slow()
        elif self._body_since is not None and now - self._body_since >= site.body_timeout:
            self._body_too_slow()
        elif not self.requests and now - self._active >= site.idle_timeout:
            self._active = float("inf")  # told once
            self.timeoutConnection()

    def _body_too_slow(self):
        self._body_since = None
        self._awaiting_body = False
        messages.info("Dropping {peer}: request body not complete within {s} s",
                      peer=str(self.getPeer()), s=self.site.body_timeout)
        self.transport.write(raw_answer(
            408, b"Request Timeout",
            f"The request body did not arrive within body_timeout "
            f"({self.site.body_timeout:g} s) after its headers."))
        self.transport.loseConnection()

    def _too_slow(self):
        self._header_since = None
        messages.info("Dropping {peer}: no complete request headers within {s} s",
                      peer=str(self.getPeer()), s=self.site.header_timeout)
        self.transport.abortConnection()

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self):
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def makeConnection(self, transport):
        super().makeConnection(_Transport(transport, self.site.reactor))

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


class AdmittingChannel(SharqChannel):
    """A connection of a site with an admit check (auth): keeps each
    request line's parts on its request, so the check can refuse the
    request before its body is read.  (A site without one does without
    this per-line work.)"""

    def lineReceived(self, line):
        if self._in_request or not line:
            return super().lineReceived(line)
        known = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > known:
            self._in_request = True
            request = self.requests[-1]
            request.target_method, _, rest = line.partition(b" ")
            request.target, _, request.target_version = rest.rpartition(b" ")


class _Transport:
    """The transport of a SharqChannel, around the connection's own:

    - an answer goes out in one piece, at once: its status line and
      headers are held (SharqChannel.writeHeaders) and sent with its body,
      on the connection's socket (ISystemHandle) while nothing waits in the
      transport's buffer.  The transport's write only buffers until the
      reactor's next turn finds the socket writable, which costs that turn
      and two epoll_ctl calls per answer.  TLS encrypts in its own
      transport: its answers go through it, still in one piece.
    - twisted.web's bare 400 (a malformed request line, header or chunked
      body) goes out as JSON.

    It provides what the connection provides, with the methods of
    ITCPTransport, IPushProducer, ISystemHandle and ISSLTransport written
    out: a __getattr__ fallback (as in ProtocolWrapper) would slow down
    every write."""

    held = b""  # the start of an answer, until the rest of it

    def __init__(self, transport, clock):
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.clock = clock
        # once the socket takes part of an answer, the rest and everything
        # after it on this connection go through the transport, in order
        self.writer = DirectWriter(transport)

    def write(self, data):
        if data == _BARE_400:
            data = _JSON_400
        if self.held:
            data, self.held = self.held + data, b""
        self.writer.write(data)

    def writeSequence(self, data):
        # a chunk of an answer without a Content-Length (Klein's routes)
        data = b"".join(data)
        if self.held:
            # the first chunk: held too, for the last chunk that finish
            # writes; sent by the next turn at the latest, should none come
            self.held += data
            self.clock.callLater(0, self.flush)
        else:
            self.write(data)

    def flush(self):
        """Send what is held (an answer without a body: HEAD, 204)."""
        if self.held:
            self.write(b"")

    def loseConnection(self):
        self.flush()
        self.transport.loseConnection()

    def abortConnection(self):
        self.transport.abortConnection()

    def loseWriteConnection(self):
        self.flush()
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
                 log_formatter=combinedLogFormatter, observe=None, idle_timeout=60,
                 header_timeout=10, body_timeout=30, max_connections=10000,
                 admit=None, **kwargs):
        # Bodies are JSON, never forms: skip twisted.web's parsing of the
        # Content-Type header (through the email package) on every POST,
        # which alone cost as much as the rest of an enqueue.
        # The idle timeout is the sweep's (SharqChannel.check), not
        # twisted.web's timer per connection, restarted on every request.
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None,
                         **kwargs)
        self.max_request_size = max_request_size
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # each connection's clocks are read this often: a timeout fires
        # within a quarter of itself (at most 1 s) after it runs out
        self.sweep_seconds = min(1.0, idle_timeout / 4, header_timeout / 4,
                                 body_timeout / 4)
        self.channels = set()
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = self.reactor
        # admit(method, path, headers): None, or the (status, reason,
        # message, header lines) that refuses a request before its body
        self.admit = admit
        if admit is not None:
            self.protocol = AdmittingChannel
        self.max_connections = max_connections
        self._refusing = False
        self.access_log_path = access_log
        self.log_formatter = log_formatter
        self.access_log = None  # the open file, while the site listens
        self._log_second = None
        self._log_time = None
        self._date_second = self._common_lines = None
        self.in_flight = 0
        self._idle_waiters = []
        # observe(request, seconds) is told of every answered request (metrics)
        self.observe = observe
        # told when a request has ended (a scrape waits for sharqd to be idle)
        self.ended = lambda: None

    # ---- connections: at most max_connections, the rest told 503

    def buildProtocol(self, addr):
        if len(self.channels) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                messages.warn("max_connections ({n}) reached: refusing new "
                              "connections with 503 until some close",
                              n=self.max_connections)
            return _Refuse(self.max_connections, self.reactor)
        self._refusing = False
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        if not self._sweep.running:
            self._sweep.start(self.sweep_seconds, now=False)
        return channel

    def connection_closed(self, channel):
        self.channels.discard(channel)
        if not self.channels and self._sweep.running:
            self._sweep.stop()

    def sweep(self):
        now = self.reactor.seconds()
        for channel in list(self.channels):
            channel.check(now)

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
        self.ended()

    def getContentFile(self, length):
        """A file for a request's body, as twisted.web's default (memory
        below 100,000 bytes).  twisted.web asks the site for this hook and
        catches the AttributeError on every request when it has none."""
        if length is not None and length < 100000:
            return BytesIO()
        return tempfile.TemporaryFile()

    def when_idle(self):
        """A Deferred that fires once no request is in flight."""
        if not self.in_flight:
            return succeed(None)
        d = Deferred()
        self._idle_waiters.append(d)
        return d

    def common_lines(self):
        """The Server and Date header lines of every answer, formatted
        once a second."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._common_lines = b"Server: %s\r\nDate: %s\r\n" % (
                SERVER_VERSION, datetimeToString(second))
        return self._common_lines

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


class _Refuse(Protocol):
    """A connection beyond max_connections: told 503 once it speaks, then
    closed; one that says nothing is closed after REFUSE_SECONDS."""

    REFUSE_SECONDS = 2

    def __init__(self, limit, clock):
        self.limit = limit
        self.clock = clock
        self.timer = None

    def connectionMade(self):
        self.timer = self.clock.callLater(self.REFUSE_SECONDS,
                                          self.transport.abortConnection)

    def dataReceived(self, data):
        # answered once the request arrived, so the client reads the answer
        # rather than a reset
        self.transport.write(raw_answer(
            503, b"Service Unavailable",
            f"Too many connections (max_connections = {self.limit}); try again "
            "shortly.").replace(b"\r\n\r\n", b"\r\nRetry-After: 1\r\n\r\n", 1))
        self.transport.loseConnection()
        self.dataReceived = lambda data: None

    def connectionLost(self, reason):
        if self.timer.active():
            self.timer.cancel()


def raise_fd_limit(max_connections):
    """Raise this process's descriptor limit to fit max_connections; the
    number of connections it does fit (less, logged, when the hard limit
    is too low)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft - FD_RESERVE < max_connections:
        fits = max(1, soft - FD_RESERVE)
        messages.warn("max_connections = {n} needs {need} file descriptors, the limit "
                      "is {limit} (LimitNOFILE in systemd, ulimit -n): serving at most "
                      "{fits} connections", n=max_connections,
                      need=max_connections + FD_RESERVE, limit=soft, fits=fits)
        return fits
    return max_connections


class HTTPService(Service):
    """Listens on an endpoint; on stop, stops listening, then drains."""

    log = Logger()

    def __init__(self, endpoint, site, reactor, description="",
                 drain_seconds=DRAIN_SECONDS, factory=None):
        self.endpoint = endpoint
        self.site = site
        # what serves a connection, when not the site itself (TLS around it)
        self.factory = factory or site
        self.reactor = reactor
        self.description = description
        self.drain_seconds = drain_seconds
        self.port = None
        self.listening = None

    def privilegedStartService(self):
        # listen before twistd drops privileges (a port below 1024)
        super().privilegedStartService()
        self.listening = self.endpoint.listen(self.factory)
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

    def __init__(self, fd, site, reactor, description="", factory=None):
        super().__init__(None, site, reactor, description, factory=factory)
        self.fd = fd

    def privilegedStartService(self):
        Service.privilegedStartService(self)  # nothing to bind: the parent did

    def startService(self):
        sock = socket.socket(fileno=self.fd)  # only to learn the family
        family = sock.family
        sock.detach()
        port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)  # adoptStreamPort listens on a duplicate
        self.listening = succeed(port)
        self._listening(port)
        Service.startService(self)
