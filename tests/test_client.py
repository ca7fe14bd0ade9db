"""
The Python client (clients/python, `sharqd_client.Client` and `AsyncClient`)
against a real sharqd process on a real redis-server: every method, the
typed errors with the server's messages, retries on 503.
"""

import asyncio
import threading
import time

import pytest

from client_support import (ScriptedServer, route_missing, start_sharqd, stop_quietly,
                            unique_type, url_of, wait_for)
from sharqd_client import (AsyncClient, BadRequest, Client, ConnectionFailed, Duplicate,
                           Enqueued, Job, NotFound, QueueFull, ServerError, Unavailable)
from support import RedisServer, free_port


# every test here starts sharqd processes
pytestmark = pytest.mark.slow

def test_round_trip(client):
    """When a job is enqueued, dequeued and finished, the job comes back with
    its payload and finishing it twice raises NotFound with the server's
    message."""
    qtype = unique_type()
    payload = {"hello": "world", "n": [1, 2.5, None], "ü": "ñ"}
    stored = client.enqueue(qtype, "u1", payload, interval=0, job_id="j1", requeue_limit=3)
    assert stored == Enqueued("j1")
    job = client.dequeue(qtype)
    assert job == Job(qtype, "u1", "j1", payload, 3, 0, job.lease_id)
    assert job.lease_id  # sharqd names each hand-out; finish(job) sends it
    client.finish(job)
    with pytest.raises(NotFound) as raised:
        client.finish(qtype, "u1", "j1")
    assert raised.value.status == 404 and "j1" in raised.value.message


def test_enqueue_makes_a_job_id(client):
    """When no job_id is given, the client makes a unique one and returns it."""
    qtype = unique_type()
    first = client.enqueue(qtype, "u1", 1, interval=0)
    second = client.enqueue(qtype, "u1", 2, interval=0)
    assert first.job_id != second.job_id
    assert [client.dequeue(qtype).job_id for _ in range(2)] == [first.job_id, second.job_id]


def test_typed_errors_carry_the_server_message(client):
    """When the server refuses an enqueue, the exception's type says why
    (Duplicate, QueueFull, BadRequest) and it carries status and message."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0, job_id="j1")
    with pytest.raises(Duplicate) as dup:
        client.enqueue(qtype, "u1", {}, interval=0, job_id="j1")
    assert dup.value.status == 409 and "already pending or active" in dup.value.message
    with pytest.raises(QueueFull) as full:
        client.enqueue(qtype, "u1", {}, interval=0, job_id="j2", max_queued_length=1)
    assert (full.value.status, full.value.current_queue_length) == (429, 1)
    with pytest.raises(BadRequest) as bad:
        client.enqueue(qtype, "u1", {}, interval=-1)
    assert bad.value.message == "`interval` has an invalid value."
    assert client.enqueue(qtype, "u1", {}, interval=0, max_queued_length=5) \
        .current_queue_length == 1


def test_dequeue_empty_and_long_poll(client):
    """When nothing is ready, dequeue answers None (or [] with count); with
    wait it returns a job enqueued while it waits."""
    qtype = unique_type()
    assert client.dequeue(qtype) is None
    assert client.dequeue(qtype, count=5) == []
    timer = threading.Timer(0.3, lambda: client.enqueue(qtype, "u1", "late", interval=0,
                                                        job_id="late"))
    timer.start()
    started = time.monotonic()
    jobs = client.dequeue(qtype, wait=10, count=5, lease=5000)
    assert [job.job_id for job in jobs] == ["late"] and time.monotonic() - started < 5


def test_enqueue_many_keeps_order_and_reports_each_job(client):
    """When a batch of 1,500 jobs holds one duplicate, every other job is
    stored in order (two requests) and the duplicate's place says so."""
    qtype = unique_type()
    jobs = [{"queue_id": "u1", "job_id": f"j{i}", "interval": 0, "payload": i}
            for i in range(1500)]
    jobs[700]["job_id"] = "j3"
    results = client.enqueue_many(qtype, jobs)
    assert isinstance(results[700], Duplicate)
    assert [r.job_id for i, r in enumerate(results) if i != 700] == \
        [f"j{i}" for i in range(1500) if i != 700]
    taken = client.dequeue(qtype, count=100)
    assert [job.payload for job in taken] == [i for i in range(101) if i != 700][:100]
    assert client.finish_many(qtype, taken + [("u1", "never")])[:-1] == [None] * 100
    assert isinstance(client.finish_many(qtype, [("u1", "never")])[0], NotFound)


def test_touch_interval_metrics_delete(client):
    """When a job's lease is touched, the new deadline comes back; interval,
    metrics and delete_queue do what their routes do."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0, job_id="j1")
    client.enqueue(qtype, "u1", {}, interval=0, job_id="j2")
    job = client.dequeue(qtype, lease=1000)
    now_ms = time.time() * 1000
    deadline = client.touch(job, lease=60_000)
    assert now_ms + 55_000 < deadline < now_ms + 65_000
    client.interval(qtype, "u1", 5000)
    with pytest.raises(NotFound):
        client.interval(qtype, "nope", 5000)
    assert qtype in client.metrics()["queue_types"]
    assert client.metrics(qtype)["queue_ids"] == ["u1"]
    assert client.metrics(qtype, "u1")["queue_length"] == 1
    client.delete_queue(qtype, "u1", purge_all=True)
    with pytest.raises(NotFound):
        client.delete_queue(qtype, "u1")
    assert client.ping() and client.deep_status()


def test_dead_letters(client):
    """When a job's budget is spent it is a dead letter: listed, retried
    back into its queue, deleted, purged."""
    qtype = unique_type()

    def kill(job_id, enqueue=True):
        if enqueue:
            client.enqueue(qtype, "u1", {"id": job_id}, interval=0, job_id=job_id,
                           requeue_limit=0)
        client.dequeue(qtype, lease=1)
        wait_for(lambda: any(d["job_id"] == job_id
                             for d in client.dead_letters(qtype).dead_letters))

    kill("j1")
    page = client.dead_letters(qtype)
    assert (page.total, page.dead_letters[0]["payload"]) == (1, {"id": "j1"})
    client.retry_dead_letter(qtype, "u1", "j1")
    assert client.dead_letters(qtype).total == 0
    kill("j1", enqueue=False)  # the retried job is pending again
    kill("j2")
    assert [d["job_id"] for d in client.iter_dead_letters(qtype, page=1)] == ["j2", "j1"]
    client.delete_dead_letter(qtype, "u1", "j2")
    with pytest.raises(NotFound):
        client.delete_dead_letter(qtype, "u1", "j2")
    assert client.purge_dead_letters(qtype) == 1


def test_async_client(server):
    """When used from asyncio, AsyncClient has the same methods and answers."""
    qtype = unique_type()

    async def scenario():
        async with AsyncClient(url_of(server)) as client:
            await client.enqueue(qtype, "u1", {"a": 1}, interval=0, job_id="j1")
            results = await client.enqueue_many(qtype, [
                {"queue_id": "u1", "job_id": "j1", "interval": 0, "payload": 1},
                {"queue_id": "u1", "job_id": "j2", "interval": 0, "payload": 2}])
            job = await client.dequeue(qtype)
            await client.finish(job)
            with pytest.raises(NotFound):
                await client.finish(job)
            return results, job

    results, job = asyncio.run(scenario())
    assert isinstance(results[0], Duplicate) and results[1] == Enqueued("j2")
    assert (job.job_id, job.payload) == ("j1", {"a": 1})


def test_policy_queue_and_pause_routes(client):
    """When the server has the policy, pause and queue routes (later sharqd
    versions), the client's methods reach them; skipped on servers without."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0)
    try:
        client.set_policy(qtype, "u1", rate=2.0, burst=3)
    except NotFound as e:
        if route_missing(e):
            pytest.skip("this sharqd has no /policy/ routes")
        raise
    assert client.policy(qtype, "u1")["rate"] == 2.0
    client.pause(qtype)
    assert client.dequeue(qtype) is None
    client.resume(qtype)
    assert client.queue(qtype, "u1")
    client.delete_policy(qtype, "u1")


def test_queue_listing_route(client):
    """When the server lists the queues of a type, queues() returns them;
    skipped on servers without GET /queues/TYPE/."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0)
    try:
        queues = client.queues(qtype)
    except NotFound as e:
        if route_missing(e):
            pytest.skip("this sharqd has no GET /queues/TYPE/")
        raise
    assert "u1" in str(queues)


def test_token_is_sent_as_bearer():
    """When a token is given, every request carries `Authorization: Bearer`."""
    stub = ScriptedServer([(200, {"message": "Hello, SharQ!"})])
    try:
        with Client(stub.url, token="s3cret") as client:
            client.ping()
        assert stub.requests[0][2]["Authorization"] == "Bearer s3cret"
    finally:
        stub.close()


def test_retried_enqueue_answering_409_counts_as_stored():
    """When an enqueue answers 503 and its retry answers 409 duplicate, the
    first try stored the job: the call returns it as stored."""
    stub = ScriptedServer([
        (503, {"status": "failure", "message": "Redis is not reachable"}),
        (409, {"status": "failure", "message": "Job `j1` is already pending"})])
    try:
        with Client(stub.url, backoff=0.01) as client:
            assert client.enqueue("sms", "u1", {}, interval=0, job_id="j1") == Enqueued("j1")
        assert len(stub.requests) == 2
    finally:
        stub.close()


def test_dequeue_is_not_retried():
    """When a dequeue answers 503, it is not sent again (a lost answer may
    have taken a job): Unavailable is raised at once."""
    stub = ScriptedServer([(503, {"status": "failure", "message": "Redis down"})] * 3)
    try:
        with Client(stub.url, backoff=0.01) as client:
            with pytest.raises(Unavailable) as raised:
                client.dequeue("sms")
        assert len(stub.requests) == 1 and raised.value.message == "Redis down"
    finally:
        stub.close()


def test_answer_that_is_not_json():
    """When something other than sharqd answers (a proxy's HTML page), the
    client raises ServerError quoting the answer."""
    stub = ScriptedServer([(502, b"<html>Bad Gateway</html>")])
    try:
        with Client(stub.url) as client:
            with pytest.raises(ServerError, match="Bad Gateway"):
                client.ping()
    finally:
        stub.close()


def test_unreachable_server_raises_connection_failed():
    """When nothing listens, an idempotent call retries for retry_for
    seconds, then raises ConnectionFailed (an Unavailable) naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retry_for=0.5, backoff=0.05) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as raised:
            client.metrics()
    assert 0.5 <= time.monotonic() - started < 5
    assert url in raised.value.message and isinstance(raised.value, Unavailable)


def test_enqueue_retries_while_redis_restarts(tmp_path):
    """When Redis is down, an enqueue is retried on 503 until Redis is back:
    the call succeeds and the job is stored once."""
    redis = RedisServer(appendonly=True).start()
    server = start_sharqd(redis, str(tmp_path))
    try:
        with Client(url_of(server), backoff=0.05) as client:
            client.enqueue("sms", "u1", "before", interval=0, job_id="before")
            redis.stop()
            threading.Timer(1.5, redis.start).start()
            started = time.monotonic()
            client.enqueue("sms", "u1", "during", interval=0, job_id="during")
            assert time.monotonic() - started >= 1.0  # it did wait for Redis
            taken = client.dequeue("sms", count=10)
            assert [job.job_id for job in taken] == ["before", "during"]
            assert client.dequeue("sms") is None
    finally:
        stop_quietly(server)
        redis.cleanup()
