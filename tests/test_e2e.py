"""
End to end: a real `twistd -n sharq -c FILE` process driven over HTTP, on a
real redis-server, including Redis outages, SIGKILL and SIGTERM.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from support import (RedisServer, Sharqd, has_unread_input, run_sharq_server,
                     run_twistd, shared_redis, wait_for)

pytestmark = pytest.mark.slow

# twistd ends by re-raising the signal that stopped it, after a clean
# shutdown (systemd counts that as success)
STOPPED_CLEANLY = (0, -signal.SIGTERM)


@pytest.fixture
def own_redis():
    redis = RedisServer(appendonly=True).start()
    yield redis
    redis.cleanup()


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(redis=None, **kwargs):
        server = Sharqd(str(tmp_path), redis or shared_redis(), **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def job(job_id, interval=0, **extra):
    return {"job_id": job_id, "interval": interval, "payload": {"id": job_id}, **extra}


def drain(server, qtype="sms", timeout=10, expect=None):
    """Dequeue and finish for `timeout` seconds, or until `expect` distinct
    jobs came out; returns the job ids in the order they came."""
    seen = []

    def take():
        status, body, _ = server.request("GET", f"/dequeue/{qtype}/")
        if status == 200:
            seen.append(body["job_id"])
            server.request("POST", f"/finish/{qtype}/{body['queue_id']}/{body['job_id']}/")
        return None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(set(seen)) != expect:
        take()
    return seen


def test_job_round_trip(servers):
    """When a job is enqueued, dequeued and finished over HTTP, each step
    answers as the original did and the payload comes back unchanged."""
    server = servers()
    payload = {"hello": "world", "n": [1, 2.5, None], "ü": "ñ"}
    body = {"job_id": "j1", "interval": 1000, "payload": payload}
    assert server.request("POST", "/enqueue/sms/u1/", body)[:2] == (
        201, {"status": "queued"})
    status, answer, _ = server.request("GET", "/dequeue/sms/")
    assert status == 200
    assert answer == {"status": "success", "queue_id": "u1", "job_id": "j1",
                      "payload": payload, "requeues_remaining": -1,
                      "current_queue_length": 0, "lease_id": answer["lease_id"]}
    assert server.request("POST", "/finish/sms/u1/j1/")[:2] == (200, {"status": "success"})
    assert server.request("POST", "/finish/sms/u1/j1/")[0] == 404


def test_content_type_is_ignored(servers):
    """When a client labels its JSON body as a form (or anything else), the
    body is still read as JSON, as the original did."""
    server = servers()
    for i, ctype in enumerate(["application/x-www-form-urlencoded",
                               "multipart/form-data; boundary=xyz", "text/plain"]):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/enqueue/sms/u1/", body=json.dumps(job(f"j{i}")),
                     headers={"Content-Type": ctype})
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (201, {"status": "queued"})
        conn.close()


def test_unfinished_job_is_handed_out_again(servers):
    """When a worker never finishes its job, the requeue timer hands it out again."""
    server = servers()
    server.request("POST", "/enqueue/sms/u1/", job("j1", requeue_limit=2))
    assert server.request("GET", "/dequeue/sms/")[1]["requeues_remaining"] == 2
    status, body, _ = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        server.request("GET", "/dequeue/sms/")), timeout=5)
    assert (body["job_id"], body["requeues_remaining"]) == ("j1", 1)


def test_redis_outage_gives_503_then_recovers(servers, own_redis):
    """When Redis stops, requests get 503 JSON within timeout + 1 s; when it
    comes back, sharqd serves again without a restart and nothing is lost."""
    server = servers(own_redis)
    server.request("POST", "/enqueue/sms/u1/", job("before"))
    own_redis.stop()
    status, body, took = server.request("POST", "/enqueue/sms/u1/", job("during"))
    assert (status, body["status"]) == (503, "failure") and took < 2.0
    status, _, took = server.request("GET", "/deepstatus/")
    assert status == 503 and took < 2.0
    own_redis.start()
    wait_for(lambda: server.request("GET", "/deepstatus/")[0] == 200, timeout=10)
    assert server.request("POST", "/enqueue/sms/u1/", job("after"))[0] == 201
    assert sorted(drain(server, timeout=1.5)) == ["after", "before"]


def test_redis_not_answering_gives_503(servers, own_redis):
    """When Redis hangs (SIGSTOP), requests get 503 within timeout + 1 s, and
    sharqd recovers once Redis answers again."""
    server = servers(own_redis)
    assert server.request("GET", "/deepstatus/")[0] == 200
    own_redis.pause()
    try:
        status, body, took = server.request("GET", "/dequeue/sms/")
        assert (status, body["status"]) == (503, "failure") and took < 2.0
    finally:
        own_redis.resume()
    wait_for(lambda: server.request("GET", "/deepstatus/")[0] == 200, timeout=10)


def ask_for(server, seconds, clients=4):
    """`clients` threads each asking /deepstatus/ again and again for
    `seconds`; [(status, seconds taken)] of every answer."""
    answers = []
    until = time.monotonic() + seconds

    def ask():
        while time.monotonic() < until:
            status, _, took = server.request("GET", "/deepstatus/")
            answers.append((status, took))

    threads = [threading.Thread(target=ask) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


@pytest.mark.parametrize("db, password", [(0, None), (3, "s3cret")])
def test_redis_stalled_for_long_comes_back(servers, db, password):
    """When Redis hangs (SIGSTOP) for several reply timeouts while clients
    keep asking, so that sharqd reconnects into the stall, every request gets
    503 within timeout + 1 s; once Redis resumes sharqd serves again by
    itself, and again after Redis drops all its connections."""
    redis = RedisServer(password=password).start()
    try:
        extra = f"db : {db}\n" + (f"password : {password}\n" if password else "")
        server = servers(redis, extra_redis=extra)
        assert server.request("GET", "/deepstatus/")[0] == 200
        redis.pause()
        try:
            answers = ask_for(server, 5.0)  # the stall: 4.5 s or more
        finally:
            redis.resume()
        assert len(answers) >= 12
        assert all(status == 503 and took < 2.0 for status, took in answers), answers
        wait_for(lambda: server.request("GET", "/deepstatus/")[0] == 200, timeout=10)
        assert redis.call("CLIENT", "KILL", "TYPE", "normal") != b":0"
        wait_for(lambda: server.request("POST", "/enqueue/sms/u1/", job("j1"))[0] == 201,
                 timeout=10)
        assert redis.call("EXISTS", "sharq_server:x", db=db) == b":0"  # answers at all
        assert server.request("GET", "/dequeue/sms/")[1]["job_id"] == "j1"
    finally:
        redis.cleanup()


def test_sharqd_starts_while_redis_is_down(servers, own_redis):
    """When sharqd starts before Redis, it answers 503 and then serves once
    Redis is up."""
    own_redis.stop()
    server = servers(own_redis)
    assert server.request("GET", "/dequeue/sms/")[0] == 503
    own_redis.start()
    wait_for(lambda: server.request("GET", "/deepstatus/")[0] == 200, timeout=10)


def test_sigkill_loses_no_acknowledged_job(servers, own_redis, tmp_path):
    """When sharqd is killed with SIGKILL while jobs are pending and active,
    a restarted sharqd delivers every job that got a 201."""
    server = servers(own_redis)
    for i in range(20):
        assert server.request("POST", f"/enqueue/sms/u{i % 3}/", job(f"j{i}"))[0] == 201
    taken = [server.request("GET", "/dequeue/sms/")[1]["job_id"] for _ in range(5)]
    assert len(taken) == 5
    server.stop(signal.SIGKILL)
    again = Sharqd(str(tmp_path), own_redis)
    again.config_path = server.config_path  # same config, same keys
    again.port = server.port
    again.start()
    try:
        delivered = drain(again, timeout=10, expect=20)
    finally:
        again.stop()
    assert sorted(set(delivered)) == sorted(f"j{i}" for i in range(20))


def test_sigterm_finishes_in_flight_requests(servers, own_redis):
    """When SIGTERM arrives during a request, that request still gets its
    answer and sharqd exits 0."""
    server = servers(own_redis)
    server.request("POST", "/enqueue/sms/u1/", job("j1"))
    own_redis.pause()
    client = socket.create_connection(("127.0.0.1", server.port), 10)
    client.sendall(b"GET /dequeue/sms/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    # in flight: sharqd has read the request (nothing left unread on its
    # side) and waits on the paused Redis
    wait_for(lambda: not has_unread_input(server.port))
    server.process.send_signal(signal.SIGTERM)
    server.wait_log("Received SIGTERM")  # the shutdown began with it in flight
    own_redis.resume()
    client.settimeout(10)
    reply = b"".join(iter(lambda: client.recv(4096), b""))
    client.close()
    assert reply.split(b" ", 2)[1] == b"200"
    assert server.process.wait(15) in STOPPED_CLEANLY
    assert "Server Shut Down" in server.read_log()


def test_payload_too_large_is_refused_before_reading(servers):
    """When a body is larger than max_request_size (by Content-Length or
    chunked), the answer is 413 JSON and nothing is stored."""
    server = servers(extra_server="max_request_size : 1000")
    big = {"job_id": "big", "interval": 0, "payload": "x" * 2000}
    status, body, _ = server.request("POST", "/enqueue/sms/u1/", big)
    assert status == 413 and "max_request_size" in body["message"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/enqueue/sms/u1/", body=iter([b"{" + b" " * 600] * 3),
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert server.request("GET", "/metrics/sms/")[1]["queue_ids"] == []


def test_non_utf8_path_is_json_400(servers):
    """When the path does not decode as UTF-8, the answer is 400 JSON."""
    status, body, _ = servers().request("GET", "/dequeue/%FF/")
    assert (status, body["status"]) == (400, "failure")


def test_unix_socket_redis_and_listen_endpoint(servers, tmp_path):
    """When Redis is reached over its unix socket and `listen` names a unix
    endpoint, sharqd serves there."""
    path = str(tmp_path / "http.sock")
    server = Sharqd(str(tmp_path), shared_redis(), unix=True,
                    extra_server=f"listen : unix:{path}")
    server.start(wait=False)
    try:
        wait_for(lambda: os.path.exists(path), timeout=10)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        sock.sendall(b"POST /enqueue/sms/u1/ HTTP/1.0\r\nContent-Length: 48\r\n\r\n"
                     b'{"job_id": "j1", "interval": 0, "payload": null}')
        reply = b"".join(iter(lambda: sock.recv(4096), b""))
        sock.close()
        assert reply.startswith(b"HTTP/1.0 201") or reply.startswith(b"HTTP/1.1 201")
    finally:
        server.stop()


def test_access_log_in_combined_format(servers, tmp_path):
    """When accesslog is set, each request is one combined-format line there,
    and SIGHUP makes sharqd write to a fresh file after rotation."""
    log = tmp_path / "logs" / "access.log"
    server = servers(extra_server=f"accesslog : {log}")
    server.request("GET", "/")
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 1)
    assert '"GET / HTTP/1.1" 200' in log.read_text()
    os.rename(log, str(log) + ".1")
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: log.exists())
    server.request("GET", "/metrics/")
    wait_for(lambda: "GET /metrics/" in log.read_text())


def test_two_workers_share_the_port(servers):
    """When workers = 2, two processes serve one port; killing a worker
    gets it started again; SIGTERM stops them all."""
    server = servers(extra_server="workers : 2")
    wait_for(lambda: "[worker 2]" in server.read_log() and
             "listening" in server.read_log().split("[worker 2]", 1)[1], timeout=15)
    for i in range(20):
        assert server.request("POST", "/enqueue/sms/u1/", job(f"j{i}"))[0] == 201
    children = subprocess.run(["pgrep", "-P", str(server.process.pid)],
                              capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGKILL)
    wait_for(lambda: "Worker 2 died" in server.read_log())
    wait_for(lambda: subprocess.run(["pgrep", "-P", str(server.process.pid)],
                                    capture_output=True, text=True).stdout.split(),
             timeout=10)
    assert server.stop() in STOPPED_CLEANLY
    assert subprocess.run(["pgrep", "-f", server.config_path]).returncode == 1


def test_workers_stop_when_the_parent_is_killed(servers):
    """When the parent sharqd dies without a chance to stop its workers
    (SIGKILL), the workers notice and exit instead of serving on alone."""
    server = servers(extra_server="workers : 2")
    wait_for(lambda: "[worker 2]" in server.read_log() and
             "listening" in server.read_log().split("[worker 2]", 1)[1], timeout=15)
    children = subprocess.run(["pgrep", "-P", str(server.process.pid)],
                              capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    worker = int(children[0])
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    wait_for(lambda: not os.path.exists(f"/proc/{worker}") or
             open(f"/proc/{worker}/stat").read().split(") ")[1].startswith("Z"),
             timeout=15)


def test_bad_config_is_one_line_and_exit_1(tmp_path):
    """When the config has a bad value, sharqd prints one line naming the
    file, section, key and value and exits 1, without a traceback."""
    conf = tmp_path / "bad.conf"
    conf.write_text("[sharq-server]\nport : eighty\n")
    result = run_twistd("-n", "--pidfile=", "sharq", "-c", str(conf))
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [f"sharqd: {conf}: [sharq-server] port = 'eighty': must be a whole number"]
    missing = run_twistd("-n", "--pidfile=", "sharq", "-c", str(tmp_path / "none.conf"))
    assert missing.returncode == 1 and "none.conf" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_port_in_use_stops_startup(tmp_path):
    """When the port is taken, sharqd says so and exits non-zero."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf = tmp_path / "c.conf"
        conf.write_text(f"[sharq-server]\nport : {taken.getsockname()[1]}\n")
        result = run_twistd("-n", "--pidfile=", "sharq", "-c", str(conf))
    assert result.returncode != 0 and "cannot listen" in result.stdout + result.stderr


def test_daemon_mode_writes_and_removes_pidfile(tmp_path):
    """When run without -n, twistd daemonizes with a pid file that goes away
    on SIGTERM."""
    server = Sharqd(str(tmp_path), shared_redis())
    pidfile, logfile = tmp_path / "sharqd.pid", tmp_path / "sharqd.log"
    result = run_twistd(f"--pidfile={pidfile}", f"--logfile={logfile}", "sharq",
                        "-c", server.config_path, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    try:
        wait_for(lambda: server.request("GET", "/")[0] == 200 if server.listening() else None)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), timeout=15)


def test_sharq_server_command(tmp_path):
    """When started as `sharq-server -c FILE`, the same service runs in the
    foreground; --version prints the version."""
    version = run_sharq_server("--version")
    assert version.stdout.startswith("sharqd ")
    server = Sharqd(str(tmp_path), shared_redis())
    server.command = lambda: [sys.executable, "-m", "sharqd.cli", "-c", server.config_path]
    server.start()
    try:
        assert server.request("GET", "/")[1] == {"message": "Hello, SharQ!"}
    finally:
        assert server.stop() in STOPPED_CLEANLY


def test_sharq_server_gunicorn_config(tmp_path):
    """When started as `sharq-server -c FILE -gc GUNICORN_FILE` and the sharq
    config leaves them out, sharqd listens on the gunicorn bind and writes
    its accesslog; a setting it does not use is named in one log line."""
    server = Sharqd(str(tmp_path), shared_redis())
    with open(server.config_path) as f:
        sharq = "".join(line for line in f if not line.startswith(("host", "port")))
    with open(server.config_path, "w") as f:
        f.write(sharq.replace("[redis]\n", f"[redis]\nhost : 127.0.0.1\n"
                                           f"port : {shared_redis().port}\n"))
    access = tmp_path / "access.log"
    gunicorn = tmp_path / "gunicorn.conf.py"
    gunicorn.write_text(f"bind = ['127.0.0.1:{server.port}']\n"
                        f"accesslog = {str(access)!r}\nworker_class = 'gevent'\n")
    server.command = lambda: [sys.executable, "-m", "sharqd.cli", "-c", server.config_path,
                              "-gc", str(gunicorn)]
    server.start()
    try:
        assert server.request("GET", "/")[1] == {"message": "Hello, SharQ!"}
        wait_for(lambda: access.exists() and '"GET / HTTP/1.1" 200' in access.read_text())
        assert server.read_log().count("'worker_class' ignored") == 1
    finally:
        assert server.stop() in STOPPED_CLEANLY


def test_sharq_server_bad_gunicorn_config_is_one_line(tmp_path):
    """When the -gc file cannot be read, sharq-server prints one line naming
    it and exits 1."""
    conf = tmp_path / "sharq.conf"
    conf.write_text("[sharq]\n")
    missing = tmp_path / "gunicorn.conf.py"
    result = run_sharq_server("-c", str(conf), "-gc", str(missing))
    assert result.returncode == 1
    assert (result.stdout + result.stderr).strip().splitlines() == [
        f"sharqd: {missing}: cannot read gunicorn config file: no such file"]
