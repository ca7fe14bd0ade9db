"""
End to end on a real Redis Cluster: `twistd -n sharq` processes with
clustered = true.  Two processes share the long-poll wake-ups and the
requeue work; a master killed under load fails over to its replica.
"""

import signal
import threading
import time

import pytest

from sharqd.redis.cluster import key_slot
from support import (RedisCluster, RedisMonitor, Sharqd, resp_command, shared_cluster,
                     unique_prefix, wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(cluster, prefix, extra_redis="", **kwargs):
        server = Sharqd(str(tmp_path), cluster.nodes[0], prefix=prefix,
                        extra_redis=cluster.config_lines().split("\n", 2)[2] + extra_redis,
                        **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def job(job_id, **extra):
    return {"job_id": job_id, "interval": 0, "payload": {"id": job_id}, **extra}


def test_long_poll_wakes_on_another_process(servers):
    """When a worker long-polls on one sharqd and a job of its type is
    enqueued through another, on whichever master holds the type, the
    waiting worker gets it at once."""
    cluster, prefix = shared_cluster(), unique_prefix()
    a, b = servers(cluster, prefix), servers(cluster, prefix)
    master = cluster.master_of(key_slot(f"{prefix}:{{sms}}"))
    monitor = RedisMonitor(master)
    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(
        zip(("status", "body", "took"), a.request("GET", "/dequeue/sms/?wait=20"))))
    waiter.start()
    monitor.wait_count(f"{prefix}:{{sms}}", 1)  # the waiter's first look
    monitor.close()
    started = time.monotonic()
    assert b.request("POST", "/enqueue/sms/q1/", job("a"))[0] == 201
    waiter.join(20)
    assert answer["status"] == 200 and answer["body"]["job_id"] == "a"
    assert time.monotonic() - started < 5


def test_two_processes_requeue_each_expired_job_once(servers):
    """When two sharqd processes run requeue passes on one cluster, every
    expired job of several types comes back exactly once."""
    cluster, prefix = shared_cluster(), unique_prefix()
    a, b = servers(cluster, prefix), servers(cluster, prefix)
    types = ["sms", "email", "push", "fax"]
    for t in types:
        body = {"jobs": [{**job(f"{t}{i}", requeue_limit=5), "queue_id": f"q{i}"}
                         for i in range(20)]}
        assert b.request("POST", f"/enqueue/{t}/", body)[0] == 201
        status, taken, _ = a.request("GET", f"/dequeue/{t}/?count=20&lease=300")
        assert status == 200 and len(taken["jobs"]) == 20
    for t in types:
        again = []

        def back():
            status, body, _ = (a if len(again) % 2 else b).request(
                "GET", f"/dequeue/{t}/?count=20")
            if status == 200:
                again.extend(body["jobs"])
            return len(again) >= 20
        wait_for(back, timeout=20, step=0.1)
        assert sorted(j["job_id"] for j in again) == sorted(f"{t}{i}" for i in range(20))
        assert {j["requeues_remaining"] for j in again} == {4}  # requeued once


class Load(threading.Thread):
    """Enqueue, dequeue and finish jobs of one type in a loop, writing down
    every answer's status and when it came."""

    def __init__(self, server, qtype):
        super().__init__(daemon=True)
        self.server, self.qtype = server, qtype
        self.acked, self.delivered = set(), set()
        self.answers = []  # (time, route, status)
        self.stop = threading.Event()

    def call(self, route, method, path, body=None):
        try:
            status, answer, _ = self.server.request(method, path, body, timeout=15)
        except (OSError, ValueError):
            status, answer = 0, {}
        self.answers.append((time.monotonic(), route, status))
        return status, answer

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            if self.call("enqueue", "POST", f"/enqueue/{self.qtype}/q{i % 10}/",
                         job(f"j{i}"))[0] == 201:
                self.acked.add(f"j{i}")
            status, answer = self.call("dequeue", "GET", f"/dequeue/{self.qtype}/")
            if status == 200:
                self.delivered.add(answer["job_id"])
                self.call("finish", "POST", f"/finish/{self.qtype}/{answer['queue_id']}/"
                          f"{answer['job_id']}/")

    def first(self, route, status, after):
        return next((t for t, r, s in self.answers if r == route and s == status and
                     t > after), None)

    def drain(self):
        while True:
            status, answer = self.call("dequeue", "GET", f"/dequeue/{self.qtype}/")
            if status != 200:
                return
            self.delivered.add(answer["job_id"])


def kill_master_under_load(cluster, server, qtype):
    """SIGKILL the master of the type's slot while Load runs; restart it 5 s
    later as a supervisor would.  Returns (load, killed at, node)."""
    load = Load(server, qtype)
    load.start()
    wait_for(lambda: len(load.acked) >= 50, timeout=20)
    node = cluster.master_of(key_slot(f"{server_prefix(server)}:{{{qtype}}}"))
    node.kill()
    killed = time.monotonic()
    wait_for(lambda: time.monotonic() - killed >= 5, timeout=10, step=0.1)
    node.start()
    # it rejoins as a replica of the master that took its place
    wait_for(lambda: "myself,slave" in node.info("CLUSTER", "NODES"), timeout=30, step=0.1)
    cluster.wait_ok()
    wait_for(lambda: load.first("enqueue", 201, time.monotonic() - 0.5), timeout=30)
    load.stop.set()
    load.join(30)
    load.drain()
    return load, killed, node


def server_prefix(server):
    with open(server.config_path) as f:
        return next(line.split(":", 1)[1].strip() for line in f
                    if line.startswith("key_prefix"))


@pytest.fixture
def own_cluster():
    cluster = RedisCluster(node_timeout=2000, appendonly=True).start()
    yield cluster
    cluster.cleanup()


def test_failover_under_load(own_cluster, servers):
    """When the master of a busy type is killed (SIGKILL), sharqd answers
    503 meanwhile, never 500; it serves the type again from the promoted
    replica within cluster-node-timeout + 5 s without a restart; the killed
    node, restarted 5 s later, rejoins as a replica.  With wait_replicas = 1
    every job answered 201 is delivered afterwards; with wait_replicas = 0
    the test reports how many were lost."""
    timeout_s = own_cluster.node_timeout / 1000
    for replicas in (1, 0):
        prefix = unique_prefix()
        server = servers(own_cluster, prefix,
                         extra_redis=f"wait_replicas : {replicas}\nwait_timeout : 500\n")
        load, killed, node = kill_master_under_load(own_cluster, server, "busy")
        statuses = {s for _, _, s in load.answers}
        assert statuses <= {200, 201, 404, 503}, statuses
        served = load.first("dequeue", 200, killed)
        assert served is not None and served - killed < timeout_s + 5
        enqueued = load.first("enqueue", 201, killed)
        lost = load.acked - load.delivered
        unavailable = sum(1 for t, _, s in load.answers if s == 503)
        print(f"\nwait_replicas = {replicas}: {len(load.acked)} jobs answered 201, "
              f"{len(lost)} lost; dequeue served again {served - killed:.1f} s after the "
              f"kill, enqueue {enqueued - killed:.1f} s; {unavailable} answers 503")
        if replicas:
            assert lost == set()
        assert resp_command(node.port, "ROLE")[0] == b"slave"
