"""
Rate policies end to end: several real `twistd -n sharq` processes on one
redis-server, hit by concurrent clients.
"""

import threading

import pytest

from support import Sharqd, shared_redis, unique_prefix

pytestmark = pytest.mark.slow

CAP = 3


@pytest.fixture
def three(tmp_path):
    prefix = unique_prefix()
    started = [Sharqd(str(tmp_path), shared_redis(), prefix=prefix).start()
               for _ in range(3)]
    yield started
    for server in started:
        server.stop()


def at_once(calls):
    """Run the calls in threads released together; their results in order."""
    results = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(i, call):
        gate.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_max_active_holds_under_concurrent_dequeues(three):
    """When 50 clients dequeue at once through three sharqd processes from a
    queue with max_active 3, exactly 3 jobs go out; each finish lets exactly
    one more go, batches included."""
    a = three[0]
    assert a.request("PUT", "/policy/sms/capped/", {"max_active": CAP})[0] == 200
    for i in range(60):
        body = {"job_id": f"j{i}", "interval": 0, "payload": {"i": i}}
        assert a.request("POST", "/enqueue/sms/capped/", body)[0] == 201

    def dequeue(server, path):
        return lambda: server.request("GET", path, timeout=20)

    # long leases: no job may come back by expiry during the test
    paths = ["/dequeue/sms/?lease=60000", "/dequeue/sms/?count=5&lease=60000",
             "/dequeue/sms/?wait=0.5&count=2&lease=60000"]
    out = at_once([dequeue(three[i % 3], paths[i % 3]) for i in range(50)])
    jobs = [job for status, body, _ in out if status == 200
            for job in body.get("jobs", [body])]
    assert len(jobs) == CAP
    assert a.request("GET", "/queues/sms/capped/")[1]["active"] == CAP
    for round_ in range(3):
        done = jobs.pop()
        assert a.request("POST", f"/finish/sms/capped/{done['job_id']}/?lease_id="
                         f"{done['lease_id']}")[0] == 200
        out = at_once([dequeue(three[i % 3], paths[i % 3]) for i in range(50)])
        more = [job for status, body, _ in out if status == 200
                for job in body.get("jobs", [body])]
        assert len(more) == 1, round_
        jobs += more
        explained = a.request("GET", "/queues/sms/capped/")[1]
        assert (explained["active"], explained["reason"]) == (CAP, "max_active")
