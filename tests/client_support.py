"""
Helpers of the client, worker, sharqctl and import tests: a sharqd process
per test module on the shared redis-server, unique queue types, and a
scripted HTTP server for the few answers a real sharqd cannot be made to
give on demand (a 503 after the job was stored).
"""

import http.server
import json
import os
import signal
import tempfile
import threading
import uuid

import pytest

from support import ROOT, Sharqd, shared_redis, wait_for  # noqa: F401 (re-exported)

CLIENT_ROOT = os.path.join(ROOT, "clients", "python")


def unique_type():
    return "t" + uuid.uuid4().hex[:10]


def start_sharqd(redis=None, tmpdir=None, **kwargs):
    tmpdir = tmpdir or tempfile.mkdtemp(prefix="sharqd-clients-")
    return Sharqd(tmpdir, redis or shared_redis(), **kwargs).start()


def url_of(server):
    return server.url("")


def route_missing(error):
    """True when a 404 says the server has no such route (a route of a later
    sharqd version)."""
    return getattr(error, "status", None) == 404 and "No such route" in error.message


class ScriptedServer:
    """An HTTP server on a free loopback port that answers the scripted
    (status, JSON body) pairs in turn and records each request."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                owner.requests.append((self.command, self.path, dict(self.headers),
                                       self.rfile.read(length)))
                status, body = owner.answers.pop(0) if owner.answers else (500, {})
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def stop_quietly(server):
    if server is not None:
        server.stop(signal.SIGKILL)


# the fixtures every client-side test module imports
@pytest.fixture(scope="module")
def server():
    server = start_sharqd()
    yield server
    stop_quietly(server)


@pytest.fixture
def client(server):
    from sharqd_client import Client
    with Client(url_of(server)) as client:
        yield client
