"""
`sharqctl import-original` with data written by the real original library
(PyPI `sharq` 1.3.0, installed in the test environment from
requirements-original.txt) into a real redis-server, imported into a real
sharqd: every job arrives exactly once, in order, with its payload,
interval and requeue budget; a dry run counts and changes nothing; an
interrupted import resumes.
"""

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

import pytest
import redis
from click.testing import CliRunner

from client_support import CLIENT_ROOT, start_sharqd, stop_quietly, unique_type, url_of, \
    wait_for
from sharqd_client import Client
from sharqd_client.cli import main
from support import shared_redis, unique_prefix

sharq = pytest.importorskip("sharq", reason="the original SharQ library (requirements-original.txt)")


# every test here starts sharqd processes
pytestmark = pytest.mark.slow

class Original:
    """The original SharQ library on the shared redis-server, under a key
    prefix of its own."""

    def __init__(self, tmp_path):
        self.prefix = unique_prefix()
        self.port = shared_redis().port
        config = tmp_path / "original.conf"
        config.write_text(
            "[sharq]\njob_expire_interval : 60000\njob_requeue_interval : 1000\n"
            "default_job_requeue_limit : -1\n\n"
            f"[redis]\ndb : 0\nkey_prefix : {self.prefix}\nconn_type : tcp_sock\n"
            f"port : {self.port}\nhost : 127.0.0.1\npassword :\nclustered : false\n")
        self.sq = sharq.SharQ(str(config))
        self.redis = redis.StrictRedis(port=self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def enqueue(self, qtype, queue_id, job_id, payload, interval=0, requeue_limit=-1):
        self.sq.enqueue(payload=payload, interval=interval, job_id=job_id,
                        queue_id=queue_id, queue_type=qtype, requeue_limit=requeue_limit)

    def keys(self):
        return sorted(k.decode() for k in self.redis.scan_iter(match=f"{self.prefix}:*")
                      if b"_counter:" not in k and not k.endswith(b":time"))

    def dump(self):
        return {k: self.redis.dump(k) for k in self.keys()}


@pytest.fixture
def original(tmp_path):
    return Original(tmp_path)


def run_import(server, original, *args, input=None):
    return CliRunner().invoke(main, ["--url", url_of(server), "import-original",
                                     "--redis", original.url, "--key-prefix",
                                     original.prefix, *args], input=input)


def drain(client, qtype):
    """Every job of a type, finished: {queue_id: [(job_id, payload,
    requeues_remaining)] in hand-out order}."""
    seen = defaultdict(list)
    while True:
        jobs = client.dequeue(qtype, count=100, lease=60_000)
        if not jobs:
            return dict(seen)
        for job in jobs:
            seen[job.queue_id].append((job.job_id, job.payload, job.requeues_remaining))
        assert all(r is None for r in client.finish_many(qtype, jobs))


def test_every_job_arrives_once_in_order(server, client, original):
    """When the original holds pending and active jobs in several queues and
    types, the import moves each exactly once: active ones first, then the
    pending ones in order, with payload, interval and requeue budget; the
    original's keys are left empty."""
    sms, email = unique_type(), unique_type()
    expected = defaultdict(list)
    for i in range(30):
        qid = f"user{i % 3}"
        payload = {"n": i, "text": "héllo ✓", "nested": {"list": [1, 2.5, None, True]}}
        original.enqueue(sms, qid, f"s{i}", payload, requeue_limit=i % 4 - 1)
        expected[(sms, qid)].append((f"s{i}", payload, i % 4 - 1))
    for i in range(5):  # carries a length limit the original's server checked
        payload = {"max_queued_length": 2, "i": i}
        original.enqueue(email, "acme", f"e{i}", payload)
        expected[(email, "acme")].append((f"e{i}", payload, -1))
    # two jobs handed out by the original and never finished: back as
    # pending, first, in the order they were handed out
    taken = [original.sq.dequeue(sms)["job_id"] for _ in range(2)]
    for job_id in reversed(taken):
        for queue in (q for (t, q), jobs in expected.items() if t == sms):
            jobs = expected[(sms, queue)]
            for j, entry in enumerate(jobs):
                if entry[0] == job_id:
                    jobs.insert(0, jobs.pop(j))

    result = run_import(server, original, "--batch-size", "7")
    assert result.exit_code == 0, result.output
    assert "IMPORTED" in result.output

    got = {**{(sms, q): jobs for q, jobs in drain(client, sms).items()},
           **{(email, q): jobs for q, jobs in drain(client, email).items()}}
    assert got == dict(expected)
    assert original.keys() == []


def test_interval_is_carried(server, client, original):
    """When an original queue has an interval, the imported queue keeps it:
    its second job is not ready right after the first."""
    qtype = unique_type()
    original.enqueue(qtype, "slow", "a", 1, interval=60_000)
    original.enqueue(qtype, "slow", "b", 2, interval=60_000)
    assert run_import(server, original).exit_code == 0
    assert client.dequeue(qtype).job_id == "a"
    assert client.dequeue(qtype) is None
    client.interval(qtype, "slow", 0)
    assert client.dequeue(qtype).job_id == "b"


def test_dry_run_counts_and_changes_nothing(server, client, original):
    """When run with --dry-run, the import counts pending and active jobs per
    type and changes neither the original's keys nor sharqd."""
    qtype = unique_type()
    for i in range(12):
        original.enqueue(qtype, f"q{i % 4}", f"j{i}", {"i": i})
    original.sq.dequeue(qtype)
    before = original.dump()
    result = run_import(server, original, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)[qtype]
    assert (counts["queues"], counts["pending"], counts["active"]) == (4, 11, 1)
    assert original.dump() == before
    assert client.dequeue(qtype) is None
    assert "would import" in run_import(server, original, "--dry-run").output


def test_a_run_that_died_after_storing_is_resumed(server, client, original):
    """When a previous run stored jobs in sharqd but died before removing them
    from the original, the next run counts them as already imported (409):
    each job still arrives exactly once, in order."""
    qtype = unique_type()
    for i in range(10):
        original.enqueue(qtype, "u1", f"j{i}", i, requeue_limit=2)
    for i in range(4):  # what the dead run had stored
        client.enqueue(qtype, "u1", i, interval=0, job_id=f"j{i}", requeue_limit=2)
    result = run_import(server, original, "--json", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)[qtype]
    assert (counts["imported"], counts["already"]) == (6, 4)
    assert drain(client, qtype) == {"u1": [(f"j{i}", i, 2) for i in range(10)]}


def test_killed_import_resumes_exactly_once(server, client, original):
    """When the import process is SIGKILLed midway, running it again moves
    the rest: every job arrives exactly once, in order."""
    qtype = unique_type()
    total = 1500
    for i in range(total):
        original.enqueue(qtype, f"q{i % 3}", f"j{i}", {"i": i})
    env = dict(os.environ, PYTHONPATH=CLIENT_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "sharqd_client.cli", "--url", url_of(server),
         "import-original", "--redis", original.url, "--key-prefix", original.prefix,
         "--batch-size", "5"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: qtype in client.metrics()["queue_types"], timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    left = sum(original.redis.llen(f"{original.prefix}:{qtype}:q{i}") for i in range(3))
    assert left > 0  # it stopped before the end (maybe between storing and removing)
    result = run_import(server, original, "--json")
    assert result.exit_code == 0, result.output
    got = drain(client, qtype)
    assert got == {f"q{r}": [(f"j{i}", {"i": i}, -1) for i in range(r, total, 3)]
                   for r in range(3)}
    assert original.keys() == []


def test_keep_copies_and_a_rerun_imports_nothing_twice(server, client, original):
    """When run with --keep, jobs are copied and stay in the original; a second
    run finds them all in sharqd already."""
    qtype = unique_type()
    for i in range(5):
        original.enqueue(qtype, "u1", f"j{i}", i)
    before = original.dump()
    first = run_import(server, original, "--keep", "--json")
    second = run_import(server, original, "--keep", "--json")
    assert json.loads(first.stdout)[qtype]["imported"] == 5
    assert json.loads(second.stdout)[qtype]["already"] == 5
    assert original.dump() == before
    assert drain(client, qtype) == {"u1": [(f"j{i}", i, -1) for i in range(5)]}


def test_refused_job_stays_in_the_original(tmp_path, original):
    """When sharqd refuses a job (a payload above its max_request_size), the
    others are imported, that one stays in the original and is named, and
    the exit status is 1."""
    server = start_sharqd(tmpdir=str(tmp_path), extra_server="max_request_size : 2000")
    try:
        qtype = unique_type()
        original.enqueue(qtype, "u1", "small1", "x")
        original.enqueue(qtype, "u1", "huge", "x" * 5000)
        original.enqueue(qtype, "u1", "small2", "y")
        result = run_import(server, original)
        assert result.exit_code == 1
        assert "u1/huge" in result.stderr and "413" in result.stderr
        with Client(url_of(server)) as client:
            assert drain(client, qtype) == {"u1": [("small1", "x", -1), ("small2", "y", -1)]}
        assert original.redis.lrange(f"{original.prefix}:{qtype}:u1", 0, -1) == [b"huge"]
    finally:
        stop_quietly(server)


def test_unreachable_original_redis(server):
    """When the original's Redis cannot be reached, the import says so and
    exits 1 without touching sharqd."""
    from support import free_port
    result = CliRunner().invoke(main, ["--url", url_of(server), "import-original",
                                       "--redis", f"redis://127.0.0.1:{free_port()}/0"])
    assert result.exit_code == 1 and "cannot reach the original's Redis" in result.stderr
