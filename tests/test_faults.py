"""
The fault suite: real sharqd and redis-server processes under a steady
load of enqueue / dequeue / finish from several client threads, while
(a) sharqd is SIGKILLed and restarted 3 times, (b) Redis is SIGKILLed and
restarted (appendonly yes, appendfsync always), (c) Redis is stopped for
3 s (SIGSTOP / SIGCONT), (d) Redis is full (maxmemory, noeviction).

Afterwards every job answered 201 was delivered at least once and is
finished; no answer was a 5xx other than 503, every answer was JSON, and
each 503 came within [redis] timeout + 1 s.
"""

import http.client
import json
import signal
import socket
import threading
import time
from collections import Counter

import pytest

from support import RedisServer, Sharqd, wait_for

pytestmark = pytest.mark.slow

QTYPE = "faults"
REDIS_TIMEOUT = 1  # Sharqd's config: [redis] timeout : 1
CLIENT_TIMEOUT = 10  # far above any answer sharqd may take: a hang shows


def redis_command(port, *args):
    """One command on a fresh connection; the raw reply (enough for INFO,
    CONFIG SET, SET and DEL)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(payload)
        reply = s.recv(65536)
        if reply.startswith(b"$"):
            size = int(reply[1:reply.index(b"\r\n")])
            while len(reply) < size + len(str(size)) + 5:
                reply += s.recv(65536)
        return reply


def used_memory(port):
    info = redis_command(port, "INFO", "memory").decode()
    return int(info.split("used_memory:", 1)[1].split("\r\n", 1)[0])


class Load:
    """Producer and worker threads against one sharqd; they write down
    every answer."""

    def __init__(self, port, producers=2, workers=2):
        self.port = port
        self.running = True
        self.producing = True
        self.lock = threading.Lock()
        self.acknowledged = set()
        self.deliveries = Counter()
        self.statuses = Counter()
        self.slow_503 = []       # (seconds, path) of 503s later than timeout + 1 s
        self.not_json = []
        self.hung = []              # no answer in CLIENT_TIMEOUT: must stay empty
        self.no_answer = Counter()  # connection refused / reset: sharqd down
        self.producers = [threading.Thread(target=self.produce, args=(n,))
                          for n in range(producers)]
        self.threads = self.producers + [threading.Thread(target=self.work)
                                         for _ in range(workers)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop_producing(self):
        self.producing = False
        for thread in self.producers:
            thread.join(30)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join(30)

    def call(self, method, path, body=None):
        """(status, JSON body) or None when there was no answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
        started = time.monotonic()
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body))
            response = conn.getresponse()
            raw = response.read()
        except socket.timeout:
            with self.lock:
                self.hung.append(f"{method} {path}")
            return None
        except (OSError, http.client.HTTPException) as e:
            with self.lock:
                self.no_answer[type(e).__name__] += 1
            time.sleep(0.05)  # sharqd is down: do not spin
            return None
        finally:
            conn.close()
        took = time.monotonic() - started
        with self.lock:
            self.statuses[response.status] += 1
            if response.status == 503 and took > REDIS_TIMEOUT + 1:
                self.slow_503.append((round(took, 2), path))
        try:
            return response.status, json.loads(raw)
        except ValueError:
            with self.lock:
                self.not_json.append((response.status, raw[:200]))
            return response.status, None

    def produce(self, n):
        i = 0
        while self.running and self.producing:
            i += 1
            job_id = f"p{n}-{i}"
            answer = self.call("POST", f"/enqueue/{QTYPE}/q{i % 8}/",
                               {"job_id": job_id, "interval": 0, "payload": {"i": i}})
            if answer is not None and answer[0] == 201:
                with self.lock:
                    self.acknowledged.add(job_id)
            time.sleep(0.01)

    def work(self):
        while self.running:
            answer = self.call("GET", f"/dequeue/{QTYPE}/")
            if answer is None or answer[0] != 200:
                time.sleep(0.01)
                continue
            job = answer[1]
            with self.lock:
                self.deliveries[job["job_id"]] += 1
            self.call("POST", f"/finish/{QTYPE}/{job['queue_id']}/{job['job_id']}/")

    def answered(self, status):
        with self.lock:
            return self.statuses[status]


def test_faults_lose_no_acknowledged_job(tmp_path):
    """When sharqd and Redis are killed, stopped and filled under load, every
    job answered 201 is delivered at least once and finished, and every
    answer is JSON, never a 5xx other than a timely 503."""
    redis = RedisServer(appendonly=True).start()
    sharqd = None
    try:
        always = lambda: redis_command(redis.port, "CONFIG", "SET", "appendfsync", "always")
        always()
        sharqd = Sharqd(str(tmp_path), redis).start()
        load = Load(sharqd.port).start()
        started = time.monotonic()
        steady = lambda: wait_for(lambda: load.answered(201) > before + 100, timeout=30)

        # (a) SIGKILL sharqd three times, restart it
        for _ in range(3):
            before = load.answered(201)
            steady()
            sharqd.stop(signal.SIGKILL)
            sharqd.start()

        # (b) SIGKILL Redis, restart it on the same files
        before = load.answered(201)
        steady()
        redis.process.kill()
        redis.process.wait()
        redis.start()
        always()

        # (c) Redis stopped for 3 s
        before = load.answered(201)
        steady()
        before_503 = load.answered(503)
        redis.pause()
        time.sleep(3)  # the fault itself lasts 3 s
        redis.resume()
        assert load.answered(503) > before_503

        # (d) Redis full: maxmemory with noeviction, then room again
        before = load.answered(201)
        steady()
        before_503 = load.answered(503)
        for _ in range(8):  # 2 MB of other data, then a ceiling just below
            redis_command(redis.port, "APPEND", "filler", "x" * 256 * 1024)
        redis_command(redis.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis_command(redis.port, "CONFIG", "SET", "maxmemory",
                      used_memory(redis.port) - 64 * 1024)
        wait_for(lambda: load.answered(503) > before_503 + 20, timeout=20)
        redis_command(redis.port, "DEL", "filler")
        redis_command(redis.port, "CONFIG", "SET", "maxmemory", 0)
        before = load.answered(201)
        steady()

        # drain: producers stop, workers take and finish what is left
        load.stop_producing()
        with load.lock:
            acknowledged = set(load.acknowledged)
        wait_for(lambda: acknowledged <= set(load.deliveries), timeout=30)
        wait_for(lambda: sharqd.request("GET", f"/metrics/{QTYPE}/")[1]["queue_ids"] == [],
                 timeout=30)
        load.stop()
        took = time.monotonic() - started

        duplicates = sum(n - 1 for n in load.deliveries.values())
        print(f"\nfault suite ({took:.0f} s): acknowledged {len(acknowledged)}, "
              f"delivered {len(load.deliveries)} ({duplicates} duplicates), "
              f"503s {load.statuses[503]}, statuses {dict(sorted(load.statuses.items()))}, "
              f"no answer (sharqd down) {dict(load.no_answer)}")
        assert acknowledged and acknowledged <= set(load.deliveries)
        assert set(load.statuses) <= {200, 201, 404, 503}, load.statuses
        assert load.not_json == []
        assert load.hung == []
        assert load.slow_503 == []
    finally:
        if sharqd is not None:
            sharqd.stop(signal.SIGKILL)
        redis.resume()
        redis.cleanup()
