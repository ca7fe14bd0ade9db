"""
Bearer tokens with scopes: the tokens file, the route -> action/type
mapping and the 401/403 answers in memory (StubTreq, over the recording
queue of test_web), then on a real `twistd` process: tokens never logged,
SIGHUP re-reads the file, a bad file stops startup with one line.
"""

import json
import os
import signal
import socket

import pytest
from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from sharqd.errors import ConfigError
from sharqd.tap import is_private
from sharqd.web.app import Api
from sharqd.web.auth import Guard, Tokens, hash_token, parse_tokens, required
from support import Sharqd, run_twistd, shared_redis, wait_for
from test_web import BASE, RecordingQueue

PRODUCER, WORKER, READER, ADMIN, ALL = "tok-producer", "tok-worker", "tok-reader", \
    "tok-admin", "tok-all"
TOKENS = f"""\
# name, sha256 of the token, scopes
producer {hash_token(PRODUCER)} enqueue:sms,enqueue:mail-*
worker   {hash_token(WORKER)} work:sms
reader   {hash_token(READER)} read:sms
admin    {hash_token(ADMIN)} admin:sms,read:*
all      {hash_token(ALL)} *:*
"""


def write_tokens(path, text=TOKENS):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# ---- the tokens file

def test_tokens_file_lines():
    """When the tokens file is read, each line gives a name, the hash and
    the scopes; comments and blank lines are skipped."""
    tokens = parse_tokens(TOKENS + "\n   \n# more\n")
    assert [t.name for t in tokens] == ["producer", "worker", "reader", "admin", "all"]
    assert tokens[0].scopes == (("enqueue", "sms"), ("enqueue", "mail-*"))
    assert tokens[0].digest == bytes.fromhex(hash_token(PRODUCER))


@pytest.mark.parametrize("line, why", [
    ("a b", "expected NAME SHA256-HEX SCOPE"),
    (f"a {'g' * 64} enqueue:sms", "64 lowercase hex digits"),
    (f"a {'0' * 64} enqueue", "must be ACTION:TYPE-GLOB"),
    (f"a {'0' * 64} drain:sms", "the action must be one of"),
    (f"a {'0' * 64} read:s/ms", "the type glob"),
    (f"producer {'0' * 64} read:sms", "used twice"),
])
def test_bad_tokens_file_names_the_line(line, why):
    """When a line of the tokens file is wrong, the error names the line
    and what is wrong with it."""
    with pytest.raises(ValueError) as raised:
        parse_tokens(TOKENS + line + "\n")
    assert str(raised.value).startswith("line 7: ") and why in str(raised.value)


def test_reload_keeps_old_tokens_on_a_bad_file(tmp_path):
    """When the tokens file is re-read, a good file replaces the tokens; a
    bad or missing one keeps those loaded before."""
    path = write_tokens(tmp_path / "tokens")
    tokens = Tokens.from_file(path)
    write_tokens(path, f"only {hash_token('new')} read:*\n")
    tokens.reload()
    assert [t.name for t in tokens.tokens] == ["only"]
    write_tokens(path, "broken line\n")
    tokens.reload()
    os.remove(path)
    tokens.reload()
    assert [t.name for t in tokens.tokens] == ["only"]
    with pytest.raises(ConfigError):
        Tokens.from_file(path)


def test_route_actions_and_types():
    """When a request comes in, its route gives the action and the queue
    type its token needs (decoded as the router decodes the path)."""
    assert required(b"POST", b"/enqueue/sms/u1/") == ("enqueue", "sms")
    assert required(b"POST", b"/enqueue/sms/") == ("enqueue", "sms")
    assert required(b"GET", b"/dequeue/") == ("work", "default")
    assert required(b"POST", b"/touch/sms/u1/j1/") == ("work", "sms")
    assert required(b"GET", b"/metrics/") == ("read", None)
    assert required(b"GET", b"/deadletters/sms/") == ("read", "sms")
    assert required(b"DELETE", b"/deadletters/sms/") == ("admin", "sms")
    assert required(b"POST", b"/deadletters/sms/u1/j1/retry/") == ("admin", "sms")
    assert required(b"POST", b"/interval/sms/u1/") == ("admin", "sms")
    assert required(b"GET", b"/policy/sms/u1/") == ("read", "sms")
    assert required(b"PUT", b"/policy/sms/") == ("admin", "sms")
    assert required(b"POST", b"/pause/sms/") == ("admin", "sms")
    assert required(b"GET", b"/queues/sms/u1/") == ("read", "sms")
    assert required(b"GET", b"/enqueue/%73ms/u1/") == ("enqueue", "sms")
    assert required(b"GET", b"/deepstatus/") == (None, None)
    assert required(b"GET", b"/health/") == (None, None)
    assert required(b"GET", b"/prometheus") == ("read", None)


def test_private_listen_addresses():
    """When sharqd listens on loopback or a unix socket it counts as
    private (no warning without auth); all interfaces or a public address
    do not."""
    assert is_private("tcp:8080:interface=127.0.0.1")
    assert is_private("tcp6:8080:interface=\\:\\:1")
    assert is_private("unix:/run/sharqd/http.sock")
    assert is_private("ssl:8443:privateKey=k.pem:interface=127.0.0.1")
    assert not is_private("tcp:8080")
    assert not is_private("tcp:8080:interface=0.0.0.0")
    assert not is_private("ssl:8443:privateKey=k.pem:interface=192.0.2.1")


# ---- the answers, in memory

class GuardTests(TestCase):
    def setUp(self):
        self.queue = RecordingQueue()
        tokens = Tokens("<test>", parse_tokens(TOKENS))
        self.treq = StubTreq(Guard(tokens, ["/", "/status/"],
                                   Api(self.queue).resource()))

    async def call(self, method, path, token=None, body=None, scheme="Bearer"):
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        response = await self.treq.request(
            method, BASE + path, headers=headers,
            data=None if body is None else json.dumps(body))
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json"])
        self.response = response
        return response.code, json.loads(await response.content())

    async def test_missing_or_unknown_token_is_401(self):
        """When a request has no token, an unknown one or another scheme,
        the answer is 401 JSON with WWW-Authenticate: Bearer, and the queue
        is not touched."""
        for token, scheme in ((None, "Bearer"), ("nope", "Bearer"),
                              (PRODUCER, "Basic"), ("", "Bearer")):
            code, body = await self.call("GET", "/dequeue/sms/", token, scheme=scheme)
            self.assertEqual((code, body["status"]), (401, "failure"))
            self.assertIn("Authorization: Bearer", body["message"])
            self.assertTrue(self.response.headers.getRawHeaders(
                "www-authenticate")[0].startswith("Bearer "))
        self.assertEqual(self.queue.calls, [])

    async def test_scope_allows_its_action_and_types(self):
        """When a token has the scope for the action and type, the request
        is served as without auth (the fast path included); glob scopes
        match types by pattern."""
        job = {"job_id": "j1", "interval": 0, "payload": 1}
        self.assertEqual((await self.call("POST", "/enqueue/sms/u1/", PRODUCER, job))[0], 201)
        self.assertEqual((await self.call("POST", "/enqueue/mail-eu/u1/", PRODUCER,
                                          job))[0], 201)
        self.assertEqual((await self.call("GET", "/dequeue/sms/", WORKER))[0], 404)
        self.assertEqual((await self.call("POST", "/finish/sms/u1/j1/", WORKER))[0], 200)
        self.assertEqual((await self.call("GET", "/metrics/sms/", READER))[0], 200)
        self.assertEqual((await self.call("DELETE", "/deletequeue/sms/u1/", ADMIN))[0], 200)
        self.assertEqual((await self.call("GET", "/metrics/", ADMIN))[0], 200)
        self.assertEqual((await self.call("GET", "/dequeue/any/", ALL))[0], 404)

    async def test_scope_missing_is_403_naming_action_and_type(self):
        """When a valid token lacks the scope for this action and type, the
        answer is 403 JSON naming the token, the action and the type, and
        nothing is done."""
        job = {"job_id": "j1", "interval": 0, "payload": 1}
        cases = [("POST", "/enqueue/email/u1/", PRODUCER, "no `enqueue` scope for queue type `email`"),
                 ("GET", "/dequeue/sms/", PRODUCER, "no `work` scope for queue type `sms`"),
                 ("POST", "/enqueue/sms/u1/", WORKER, "no `enqueue` scope for queue type `sms`"),
                 ("GET", "/metrics/", READER, "may not read across all queue types"),
                 ("POST", "/interval/sms/u1/", WORKER, "no `admin` scope for queue type `sms`"),
                 ("DELETE", "/deadletters/sms/", READER, "no `admin` scope for queue type `sms`"),
                 ("POST", "/enqueue/%65mail/u1/", PRODUCER, "queue type `email`")]
        for method, path, token, message in cases:
            code, body = await self.call(method, path, token, job)
            self.assertEqual((code, body["status"]), (403, "failure"), path)
            self.assertIn(message, body["message"])
            self.assertIn("insufficient_scope",
                          self.response.headers.getRawHeaders("www-authenticate")[0])
        self.assertEqual(self.queue.calls, [])

    async def test_batch_is_checked_once_for_its_type(self):
        """When a batch enqueue or finish comes in, its one queue type is
        checked once: allowed, all its jobs go through; not, none does."""
        jobs = {"jobs": [{"queue_id": "u1", "job_id": "j1", "interval": 0, "payload": 1},
                         {"queue_id": "u2", "job_id": "j2", "interval": 0, "payload": 2}]}
        self.assertEqual((await self.call("POST", "/enqueue/email/", PRODUCER, jobs))[0], 403)
        self.assertEqual((await self.call("POST", "/finish/sms/", PRODUCER, jobs))[0], 403)
        self.assertEqual(self.queue.calls, [])

    async def test_open_routes_need_no_token(self):
        """When a route is in open_routes (default / and /status/), it
        answers without a token; /deepstatus/ needs any valid token."""
        self.assertEqual((await self.call("GET", "/"))[0], 200)
        self.assertEqual((await self.call("GET", "/deepstatus/"))[0], 401)
        self.assertEqual((await self.call("GET", "/deepstatus/", READER))[0], 200)
        self.assertEqual((await self.call("GET", "/nowhere/", READER))[0], 404)


class _Counting:
    """A resource that counts the requests it is asked to render."""

    isLeaf = True

    def __init__(self):
        self.rendered = 0

    def render(self, request):
        self.rendered += 1
        return b"{}"


def _site_with_guard():
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from sharqd.web.site import SharqSite

    app = Resource()
    counting = _Counting()
    app.render = counting.render
    app.isLeaf = True
    guard = Guard(Tokens("<test>", parse_tokens(TOKENS)), ["/", "/status/"], app)
    site = SharqSite(guard, 1 << 20, reactor=Clock(), admit=guard.early_refusal)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return counting, channel, transport


@pytest.mark.parametrize("token, status", [(None, 401), ("nope", 401), (WORKER, 403)])
def test_refused_before_the_body_is_read(token, status):
    """When a request with a body has no token, an unknown one, or one
    without the scope, it is answered 401/403 JSON as soon as its headers
    are in, its body is not read and the connection is closed: a client
    without a token cannot make sharqd buffer bodies."""
    counting, channel, transport = _site_with_guard()
    auth = b"" if token is None else b"Authorization: Bearer %s\r\n" % token.encode()
    channel.dataReceived(b"POST /enqueue/sms/u1/ HTTP/1.1\r\nHost: x\r\n" + auth
                         + b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"100 Continue" not in head
    assert b"WWW-Authenticate: Bearer" in head
    assert json.loads(body)["status"] == "failure"
    assert transport.disconnecting
    channel.dataReceived(b"x" * 1000)  # the body, if it comes, is dropped
    assert counting.rendered == 0


def test_allowed_body_is_read_and_served():
    """When the token allows the request, its body is read and the route
    serves it; a GET without a token is still answered on its connection."""
    counting, channel, transport = _site_with_guard()
    channel.dataReceived(b"POST /enqueue/sms/u1/ HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer %s\r\nContent-Length: 2\r\n\r\n{}"
                         % PRODUCER.encode())
    assert transport.value().startswith(b"HTTP/1.1 200 ") and counting.rendered == 1
    channel.dataReceived(b"GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"HTTP/1.1 401 " in transport.value() and not transport.disconnecting


# ---- on a real process

def bearer(server, method, path, token=None, body=None):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_tokens_in_process_never_logged_and_reloaded(tmp_path):
    """When sharqd runs with [auth], tokens work end to end and appear in
    neither the access log nor the server log; SIGHUP re-reads the tokens
    file, and a bad file keeps the tokens in use and logs why."""
    tokens = write_tokens(tmp_path / "tokens")
    access = tmp_path / "access.log"
    server = Sharqd(str(tmp_path), shared_redis(), extra_server=f"accesslog : {access}",
                    extra_redis=f"\n[auth]\ntokens_file : {tokens}\n").start()
    try:
        job = {"job_id": "j1", "interval": 0, "payload": {"n": 1}}
        assert bearer(server, "POST", "/enqueue/sms/u1/", PRODUCER, job)[0] == 201
        assert bearer(server, "POST", "/enqueue/sms/u1/", "tok-wrong", job)[0] == 401
        assert bearer(server, "GET", "/dequeue/sms/", PRODUCER)[0] == 403
        status, body = bearer(server, "GET", "/dequeue/sms/", WORKER)
        assert (status, body["job_id"]) == (200, "j1")
        assert bearer(server, "GET", "/")[0] == 200
        # a body without a token is refused on its headers, never read
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"POST /enqueue/sms/u2/ HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 1000000\r\n\r\n")
            assert raw.recv(4096).startswith(b"HTTP/1.1 401 Unauthorized")

        write_tokens(tokens, TOKENS + f"late {hash_token('tok-late')} read:*\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "6 tokens" in server.read_log())
        assert bearer(server, "GET", "/metrics/", "tok-late")[0] == 200

        write_tokens(tokens, "not a tokens file\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "Tokens file not reloaded" in server.read_log())
        assert "line 1: expected NAME SHA256-HEX SCOPE" in server.read_log()
        assert bearer(server, "GET", "/metrics/", "tok-late")[0] == 200

        wait_for(lambda: access.exists() and access.read_text().count("\n") >= 8)
        assert '"POST /enqueue/sms/u2/ HTTP/1.1" 401' in access.read_text()
        for log in (access.read_text(), server.read_log()):
            for token in (PRODUCER, WORKER, "tok-wrong", "tok-late"):
                assert token not in log
    finally:
        server.stop(signal.SIGKILL)


@pytest.mark.slow
def test_bad_tokens_file_stops_startup(tmp_path):
    """When the tokens file is missing or wrong, sharqd prints one line
    naming the config file, [auth] tokens_file and the reason, and exits 1."""
    tokens = write_tokens(tmp_path / "tokens", "x y\n")
    conf = tmp_path / "auth.conf"
    conf.write_text(f"[sharq-server]\nport : 1\n[auth]\ntokens_file : {tokens}\n")
    result = run_twistd("-n", "--pidfile=", "sharq", "-c", str(conf))
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1
    assert lines == [f"sharqd: {conf}: [auth] tokens_file = {tokens!r}: {tokens}: "
                     "line 1: expected NAME SHA256-HEX SCOPE[,SCOPE...]"]
