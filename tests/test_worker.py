"""
The worker (`sharqd_client.Worker`) against a real sharqd on a real
redis-server: jobs run and are finished, failures expire and come back, a
slow handler keeps its lease, a killed worker loses no job, SIGTERM stops
gracefully, Redis restarting does not stop it.  Worker processes are real
subprocesses (tests/worker_process.py) where a signal is the point.
"""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from client_support import (CLIENT_ROOT, start_sharqd, stop_quietly, unique_type, url_of,
                            wait_for)
from sharqd_client import Client, Worker
from support import ROOT, RedisServer

HERE = os.path.dirname(os.path.abspath(__file__))


# every test here starts sharqd processes
pytestmark = pytest.mark.slow

@pytest.fixture
def run_worker():
    """Start Workers in background threads; stopped at the end of the test."""
    workers = []

    def start(client, queue_type, handler, **options):
        options.setdefault("wait", 1)
        worker = Worker(client, queue_type, handler, **options).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(now=True)
        worker.join(10)


def enqueue(client, qtype, ids, queue_id="u1", **options):
    for job_id in ids:
        client.enqueue(qtype, queue_id, {"id": job_id}, interval=0, job_id=job_id, **options)


def queue_is_empty(client, qtype):
    return qtype not in client.metrics()["queue_types"]


def test_jobs_run_in_threads_and_are_finished(client, run_worker):
    """When 20 jobs wait and a worker runs 4 at a time, each job runs once,
    is finished, and no more than 4 ran at once."""
    qtype = unique_type()
    enqueue(client, qtype, [f"j{i}" for i in range(20)])
    seen, running, most = Counter(), [0], [0]
    lock = threading.Lock()
    gate = threading.Event()

    def handle(job):
        with lock:
            seen[job.job_id] += 1
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(0.05)
        with lock:
            running[0] -= 1

    worker = run_worker(client, qtype, handle, concurrency=4)
    wait_for(lambda: worker.processed == 20)
    assert seen == Counter({f"j{i}": 1 for i in range(20)})
    assert most[0] <= 4
    wait_for(lambda: queue_is_empty(client, qtype))


def test_async_handler(client, run_worker):
    """When the handler is a coroutine function, it runs on the worker's
    event loop and its jobs are finished."""
    qtype = unique_type()
    enqueue(client, qtype, ["a", "b", "c"])
    done = []

    async def handle(job):
        await asyncio.sleep(0.01)
        done.append(job.payload["id"])

    worker = run_worker(client, qtype, handle, concurrency=3)
    wait_for(lambda: worker.processed == 3)
    assert sorted(done) == ["a", "b", "c"]
    wait_for(lambda: queue_is_empty(client, qtype))


def test_failed_job_comes_back_and_is_logged_once(client, run_worker, caplog):
    """When a handler raises, the job is not finished: it comes back when
    its lease ends, and the failure is one log line naming the job."""
    qtype = unique_type()
    enqueue(client, qtype, ["flaky"], requeue_limit=3)
    attempts = []

    def handle(job):
        attempts.append(job.requeues_remaining)
        if len(attempts) == 1:
            raise ValueError("first try fails")

    with caplog.at_level(logging.ERROR, logger="sharqd_client.worker"):
        worker = run_worker(client, qtype, handle, lease=300)
        wait_for(lambda: worker.processed == 1)
    assert attempts == [3, 2] and worker.failed == 1
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert f"job {qtype}/u1/flaky failed: ValueError: first try fails" in failures[0]
    assert "\n" not in failures[0]


def test_slow_handler_keeps_its_lease(client, run_worker):
    """When a handler runs for 3 times its 1 s lease, the worker touches the
    job (each 0.5 s): no other worker gets it meanwhile, and it is finished
    once."""
    qtype = unique_type()
    enqueue(client, qtype, ["slow"])
    starts = Counter()

    def handle(job):
        starts[job.job_id] += 1
        threading.Event().wait(3.0)

    worker = run_worker(client, qtype, handle, lease=1000)
    other = run_worker(client, qtype, lambda job: starts.update([job.job_id]), lease=1000)
    wait_for(lambda: worker.processed == 1)
    assert starts == Counter({"slow": 1}) and other.processed == 0
    wait_for(lambda: queue_is_empty(client, qtype))


def worker_process(server, qtype, log_path, seconds, lease):
    env = dict(os.environ, PYTHONPATH=CLIENT_ROOT)
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "worker_process.py"), url_of(server), qtype,
         str(log_path), str(seconds), str(lease)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def lines(path):
    return path.read_text().split() if path.exists() else []


def test_killed_worker_loses_no_job(server, client, run_worker, tmp_path):
    """When a worker process is SIGKILLed in the middle of a job, that job
    is handed out again when its lease ends and another worker does it:
    every job is done at least once and finished."""
    qtype = unique_type()
    enqueue(client, qtype, ["j1", "j2", "j3"])
    log = tmp_path / "worker.log"
    process = worker_process(server, qtype, log, 60, 1000)
    try:
        wait_for(lambda: "start" in lines(log))
    finally:
        process.kill()
        process.wait(10)
    mid_job = lines(log)[1]
    done = Counter()
    worker = run_worker(client, qtype, lambda job: done.update([job.job_id]), lease=1000)
    wait_for(lambda: worker.processed == 3)
    assert set(done) == {"j1", "j2", "j3"} and mid_job in done
    wait_for(lambda: queue_is_empty(client, qtype))


def test_sigterm_stops_gracefully(server, client, tmp_path):
    """When a worker process gets SIGTERM during a job, it takes no new job,
    lets the running one complete and finishes it, then exits 0."""
    qtype = unique_type()
    enqueue(client, qtype, ["j1", "j2"])
    log = tmp_path / "worker.log"
    process = worker_process(server, qtype, log, 1.5, 5000)
    try:
        wait_for(lambda: "start" in lines(log))
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert lines(log) == ["start", "j1", "done", "j1", "exited"]
    job = client.dequeue(qtype)  # j1 was finished; j2 was never taken
    assert job.job_id == "j2" and client.dequeue(qtype) is None


def test_worker_rides_out_a_redis_restart(tmp_path, run_worker):
    """When Redis restarts under sharqd, the worker backs off while it gets
    503s and then takes up the jobs again by itself."""
    redis = RedisServer(appendonly=True).start()
    server = start_sharqd(redis, str(tmp_path))
    client = Client(url_of(server), backoff=0.05)
    try:
        qtype = unique_type()
        done = []
        worker = run_worker(client, qtype, lambda job: done.append(job.job_id))
        enqueue(client, qtype, ["before"])
        wait_for(lambda: worker.processed == 1)
        redis.stop()
        threading.Timer(1.5, redis.start).start()
        enqueue(client, qtype, ["after1", "after2"])  # retried until Redis is back
        wait_for(lambda: worker.processed == 3)
        assert done == ["before", "after1", "after2"]
    finally:
        client.close()
        stop_quietly(server)
        redis.cleanup()


def test_readme_worker_example_runs_as_printed(server):
    """When the README's worker example runs (with the test sharqd's URL), it
    handles its three jobs, one a second, and Ctrl-C (SIGINT) stops it
    cleanly."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    start = readme.index("```python\nfrom sharqd_client import Client, Worker")
    code = readme[start + len("```python\n"):readme.index("```", start + 10)]
    assert len(code.strip().splitlines()) <= 10
    env = dict(os.environ, PYTHONPATH=CLIENT_ROOT, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-c", code.replace("http://127.0.0.1:8080", url_of(server))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    reader = threading.Thread(target=lambda: printed.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(printed) == 3, timeout=20)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(20)
    assert code == 0, process.stderr.read()
    assert [line.split(" ", 1)[0] for line in printed] == ["sending"] * 3
    assert "'n': 2" in printed[-1]
