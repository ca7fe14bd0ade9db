"""
Answers leave a connection whole and in order, however much of them the
socket takes at once: sharqd sends each answer on the connection's socket
in one piece (sharqd/web/site.py, _Transport) and falls back to the
transport's buffer when the socket is full.  Over a real loopback
connection to an in-process site.
"""

import time
from email.utils import parsedate_to_datetime

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from sharqd.web.site import SharqSite
from support import wait_until

# far more than a loopback socket's send and receive buffers hold together
BIG = 32 * 1024 * 1024


class _Pages(Resource):
    """/big answers BIG bytes, /small a few, /echo the request's body; all
    with a Content-Length."""

    isLeaf = True

    def render(self, request):
        if request.path == b"/big":
            return b"b" * BIG
        if request.path == b"/echo":
            return request.content.read()
        return b"small"


class Reader(Protocol):
    """Sends its requests at once (pipelined); keeps all it receives."""

    def __init__(self, requests):
        self.requests = requests
        self.received = bytearray()

    def connectionMade(self):
        self.transport.write(self.requests)

    def dataReceived(self, data):
        self.received += data


def split_answers(data):
    """The (status, body) of each whole answer in data, in order; None
    while the last one is still incomplete."""
    answers, data = [], bytes(data)
    while data:
        head, blank, rest = data.partition(b"\r\n\r\n")
        if not blank:
            return None
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers[b"Content-Length"])
        if len(rest) < length:
            return None
        answers.append((lines[0].split(b" ", 1)[1], rest[:length]))
        data = rest[length:]
    return answers


class AnswerTests(TestCase):

    def serve(self):
        site = SharqSite(_Pages(), 1 << 20)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def connect(self, port, requests):
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), Reader(requests))
        self.addCleanup(client.transport.loseConnection)
        return client

    async def test_an_answer_larger_than_the_socket_takes_arrives_whole(self):
        """When an answer is larger than the socket takes at once, it
        arrives whole, and the answers after it on the same
        connection arrive after it, in order."""
        port = self.serve()
        client = await self.connect(
            port, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: (split_answers(client.received) or ()).count(
            (b"200 OK", b"small")) == 2, timeout=60)
        self.assertEqual(split_answers(client.received),
                         [(b"200 OK", b"b" * BIG), (b"200 OK", b"small")] * 2)

    async def test_an_answer_without_a_body_is_sent(self):
        """When an answer has no body (HEAD), its status line and headers
        are sent, and the next answer follows them."""
        port = self.serve()
        client = await self.connect(
            port, b"HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: client.received.endswith(b"\r\n\r\nsmall"))
        head, _, rest = bytes(client.received).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Content-Length: 5", head)
        self.assertEqual(split_answers(rest), [(b"200 OK", b"small")])

    async def test_bodies_small_and_large_are_read_whole(self):
        """When request bodies come below and above 100,000 bytes (kept in
        memory and in a temporary file), each is read whole."""
        port = self.serve()
        bodies = [b"s" * 99_999, b"L" * 300_000]
        client = await self.connect(port, b"".join(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body) for body in bodies))
        await wait_until(lambda: split_answers(client.received) is not None
                         and len(split_answers(client.received)) == 2)
        self.assertEqual(split_answers(client.received),
                         [(b"200 OK", body) for body in bodies])

    async def test_every_answer_carries_date_and_server(self):
        """When answers are sent, each carries one Date header, the time of
        the answer in HTTP's date format, and one Server header."""
        port = self.serve()
        client = await self.connect(port, b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: client.received.count(b"\r\n\r\n") == 2)
        for head in bytes(client.received).split(b"\r\n\r\n")[:2]:
            lines = head.removeprefix(b"small").split(b"\r\n")
            self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
            names = [line.split(b": ")[0] for line in lines[1:]]
            self.assertEqual((names.count(b"Date"), names.count(b"Server")), (1, 1))
            date = dict(line.split(b": ", 1) for line in lines[1:])[b"Date"].decode()
            self.assertTrue(date.endswith(" GMT"))
            self.assertLess(abs(parsedate_to_datetime(date).timestamp() - time.time()), 5)
