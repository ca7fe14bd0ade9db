"""
The hot dispatch is derived from the Klein app's one route table; a client
that hangs up cancels the work done for it; HEAD takes no job; SIGHUP has
one owner that gives the old handler back.  In memory (StubTreq) and over
a real loopback connection to an in-process site.
"""

import json
import signal

from klein import Klein
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sharqd.queue.operations import Job
from sharqd.web.app import Api, _HotPath, hot, hot_routes
from sharqd.web.hangup import HangupService
from sharqd.web.site import SharqSite
from support import wait_until

BASE = "http://sharqd"


class HotRoutesTests(SynchronousTestCase):

    def test_hot_routes_come_from_the_klein_table(self):
        """When the Api is built, the fast lookup holds exactly the routes
        marked @hot in the Klein app, with their path variables in order."""
        self.assertEqual(hot_routes(Api.app), {
            (b"POST", b"enqueue", 5): ("enqueue", ("queue_type", "queue_id")),
            (b"GET", b"dequeue", 4): ("dequeue", ("queue_type",)),
            (b"POST", b"finish", 6): ("finish", ("queue_type", "queue_id", "job_id")),
        })

    def test_a_new_hot_route_needs_no_second_table(self):
        """When a route is declared once with @hot, the hot dispatch serves
        it without Klein's routing."""
        class Small:
            app = Klein()

            @app.route("/ping/<name>/", methods=["POST"])
            @hot
            def ping(self, request, name):
                return succeed(b'{"pong": "%s"}' % name.encode())

        klein = RecordingResource()
        treq = StubTreq(_HotPath(Small(), klein))
        response = self.successResultOf(treq.post(BASE + "/ping/abc/"))
        self.assertEqual(self.successResultOf(response.content()), b'{"pong": "abc"}')
        self.assertEqual(klein.rendered, [])
        self.successResultOf(treq.post(BASE + "/ping/a%62c/"))  # escapes: Klein's
        self.assertEqual(klein.rendered, [b"/ping/a%62c/"])

    def test_hot_route_of_another_shape_is_refused(self):
        """When a route marked @hot has a typed or literal later segment,
        building the lookup fails instead of serving it wrongly."""
        for url in ("/a/<int:n>/", "/a/b/<n>/", "/a/<n>"):
            app = Klein()
            app.route(url, methods=["GET"])(hot(lambda request, n=None: None))
            self.assertRaises(ValueError, hot_routes, app)

    def test_hot_route_sharing_its_shape_is_refused(self):
        """When another route has the same method, first segment and length
        as a @hot one, building the lookup fails (werkzeug would choose)."""
        app = Klein()
        app.route("/a/<n>/", methods=["GET"])(hot(lambda request, n: None))
        app.route("/a/<m>/", methods=["GET"], endpoint="other")(lambda request, m: None)
        self.assertRaises(ValueError, hot_routes, app)


class RecordingResource:
    """Stands in for Klein's resource: records the paths it is asked for."""

    isLeaf = True

    def __init__(self):
        self.rendered = []

    def render(self, request):
        self.rendered.append(request.path)
        request.setResponseCode(404)
        return b"{}"


class HangingQueue:
    """enqueue and dequeue never answer; their cancellation is recorded."""

    def __init__(self):
        self.calls = []
        self.cancelled = []

    def _hang(self, name):
        self.calls.append(name)
        return Deferred(lambda d: self.cancelled.append(name))

    def enqueue(self, *args):
        return self._hang("enqueue")

    def dequeue(self, queue_type, lease=None):
        return self._hang("dequeue")


class OneShot(Protocol):
    """Sends one request; the test closes the connection."""

    def __init__(self, data):
        self.data = data

    def connectionMade(self):
        self.transport.write(self.data)


class HangUpTests(TestCase):

    async def serve(self, queue):
        site = SharqSite(Api(queue).resource(), 1 << 20)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, site

    async def test_client_hanging_up_cancels_the_hot_handler(self):
        """When a client hangs up while its enqueue or dequeue waits on
        Redis, the handler's Deferred is cancelled and nothing is logged."""
        queue = HangingQueue()
        port, site = await self.serve(queue)
        body = json.dumps({"job_id": "j", "interval": 0, "payload": 1}).encode()
        for request in (b"POST /enqueue/sms/u1/ HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
                        b"GET /dequeue/sms/ HTTP/1.1\r\nHost: x\r\n\r\n"):
            client = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port), OneShot(request))
            await wait_until(lambda: len(queue.calls) > len(queue.cancelled))
            client.transport.loseConnection()
            await wait_until(lambda: len(queue.cancelled) == len(queue.calls))
        self.assertEqual(queue.cancelled, ["enqueue", "dequeue"])
        await wait_until(lambda: site.in_flight == 0)


class JobQueue:
    def __init__(self):
        self.calls = []

    def dequeue(self, queue_type, lease=None):
        self.calls.append(queue_type)
        return succeed(Job("q1", "j1", b"{}", -1, 0))


class HeadTests(TestCase):

    async def test_head_dequeue_takes_no_job(self):
        """When HEAD /dequeue/<type>/ or HEAD /dequeue/ comes, the answer is
        405 with Allow: GET and no dequeue is run."""
        queue = JobQueue()
        treq = StubTreq(Api(queue).resource())
        for path in ("/dequeue/sms/", "/dequeue/"):
            response = await treq.head(BASE + path)
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers.getRawHeaders("allow"), ["GET"])
        self.assertEqual(queue.calls, [])
        response = await treq.get(BASE + "/dequeue/sms/")
        self.assertEqual(response.code, 200)
        self.assertEqual(queue.calls, ["sms"])


class HangupServiceTests(SynchronousTestCase):

    def setUp(self):
        self.original = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, self.original)

    def test_sighup_calls_every_listener_in_the_reactor_turn(self):
        """When SIGHUP arrives, each listener is called, from the reactor."""
        class Reactor(Clock):
            def callFromThread(self, f, *args):
                self.callLater(0, f, *args)

        clock = Reactor()
        service = HangupService(clock)
        heard = []
        service.add(lambda: heard.append("log"))
        service.add(lambda: heard.append("workers"))
        service.startService()
        self.addCleanup(service.stopService)
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual(heard, [])
        clock.advance(0)
        self.assertEqual(heard, ["log", "workers"])

    def test_stop_gives_the_previous_handler_back(self):
        """When the service stops, SIGHUP is handled as before it started."""
        def before(signum, frame):
            pass

        signal.signal(signal.SIGHUP, before)
        service = HangupService(Clock())
        service.startService()
        self.assertIsNot(signal.getsignal(signal.SIGHUP), before)
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), before)
