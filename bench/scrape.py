#!/usr/bin/env python3
"""
The cost of a /prometheus scrape: a sharqd of this tree on a redis-server of
its own, filled straight in Redis with QUEUES queues over TYPES queue types
(one pending job each), then

1. the time of a scrape (GET /prometheus) and of GET /queues/ (median of
   `--scrapes`), and the longest single Redis call a scrape made (SLOWLOG);
2. the latency of sequential enqueues over HTTP (keep-alive) without
   scrapes, then while another process scrapes every `--every` seconds:
   the enqueues that overlapped a scrape and those that did not.

Run for 1,000 types x 100 queues and for 1 type x 100,000 queues:

    .venv/bin/python bench/scrape.py [--types 1000] [--queues 100000] [--every 2]

Prints one line per figure and a JSON line for scripts.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from servers import RedisServer, free_port  # noqa: E402

from sharqd.queue.operations import SCRIPTS  # noqa: E402

PREFIX = "scrape"
BATCH = 1000


def fill(redis, types, queues):
    """queues queues spread over types types, one pending job each."""
    script = SCRIPTS["enqueuebatch"]
    redis.call(b"SCRIPT", b"LOAD", script.source)
    per_type = queues // types
    commands = []
    for t in range(types):
        qtype = f"type{t:04d}"
        for start in range(0, per_type, BATCH):
            ids = range(start, min(per_type, start + BATCH))
            fields = "".join(f"q{i} j{i} 1000 -1 - " for i in ids)
            commands.append((b"EVALSHA", script.sha, 0, f"{PREFIX}:{{{qtype}}}", PREFIX,
                             qtype, "", fields, *[b"{}"] * len(ids)))
    # sharqd registers a type before its first enqueue (the registry feeds
    # /metrics/, /prometheus and the requeue pass); the scripts do not
    now = int(time.time())
    commands += [(b"ZADD", f"{PREFIX}:registry", now, f"type{t:04d}") for t in range(types)]
    errors = [r for r in redis.pipeline(commands, chunk=50) if isinstance(r, Exception)]
    if errors:
        raise SystemExit(f"filling Redis failed: {errors[0]}")


def start_sharqd(tmp, redis_port):
    port = free_port()
    conf = tmp / "sharqd.conf"
    conf.write_text(
        "[sharq]\njob_expire_interval : 60000\njob_requeue_interval : 1000\n"
        f"[sharq-server]\nhost : 127.0.0.1\nport : {port}\n"
        f"[redis]\nhost : 127.0.0.1\nport : {redis_port}\nkey_prefix : {PREFIX}\n"
        "timeout : 10\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp / "sharqd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "sharq", "-c", str(conf)],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/deepstatus/")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"sharqd did not start; see {tmp}/sharqd.log")


def process_cpu(pid):
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_get(conn, path):
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (path, response.status, body[:200])
    return time.perf_counter() - started, body


def enqueue_latencies(port, seconds, tag, in_flight=None):
    """[(seconds, whether a scrape was in flight)] of sequential enqueues."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i += 1
        body = json.dumps({"job_id": f"{tag}{i}", "interval": 0, "payload": {}})
        before = in_flight is not None and in_flight.value
        started = time.perf_counter()
        conn.request("POST", f"/enqueue/latency/q{i % 100}/", body=body)
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - started
        out.append((took, bool(before or (in_flight is not None and in_flight.value))))
    return out


def scrape_loop(port, every, in_flight, stop):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        in_flight.value = 1
        timed_get(conn, "/prometheus")
        in_flight.value = 0
        stop.wait(every)


def summary(latencies):
    ms = sorted(x * 1000 for x in latencies)
    return {"n": len(ms), "p50_ms": round(ms[len(ms) // 2], 3),
            "p99_ms": round(ms[int(len(ms) * 0.99)], 3), "max_ms": round(ms[-1], 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=100000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--every", type=float, default=2.0,
                        help="seconds between scrapes while enqueuing (0: back to back)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-scrape-"))
    redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", tmp)
    proc = None
    try:
        fill(redis.client, args.types, args.queues)
        proc, port = start_sharqd(tmp, redis.port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        redis.client.call(b"CONFIG", b"SET", b"slowlog-log-slower-than", b"0")
        redis.client.call(b"SLOWLOG", b"RESET")
        cpu = process_cpu(proc.pid)
        scrapes = [timed_get(conn, "/prometheus") for _ in range(args.scrapes)]
        cpu_per_scrape = (process_cpu(proc.pid) - cpu) / args.scrapes
        log = redis.client.call(b"SLOWLOG", b"GET", b"-1")
        longest = max(int(entry[2]) for entry in log
                      if entry[3][0].upper() in (b"FCALL", b"EVALSHA", b"EVAL"))
        redis.client.call(b"CONFIG", b"SET", b"slowlog-log-slower-than", b"10000")
        queues = [timed_get(conn, "/queues/")[0] for _ in range(args.scrapes)]
        text = scrapes[-1][1].decode()
        pending = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("sharqd_jobs_pending{"))
        assert pending == args.queues // args.types * args.types, pending

        quiet = enqueue_latencies(port, args.seconds, "a")
        # scrapes from another process (every --every seconds; 0: back to
        # back) while this one enqueues; each enqueue is marked by whether
        # a scrape was in flight while it was
        in_flight = multiprocessing.Value("i", 0)
        stop = multiprocessing.Event()
        scraper = multiprocessing.Process(target=scrape_loop,
                                          args=(port, args.every, in_flight, stop))
        scraper.start()
        busy = enqueue_latencies(port, args.seconds, "b", in_flight)
        stop.set()
        scraper.join()
        during = [t for t, overlapped in busy if overlapped]
        between = [t for t, overlapped in busy if not overlapped]
        result = {
            "types": args.types, "queues": args.queues,
            "scrape_s_median": round(statistics.median(s for s, _ in scrapes), 3),
            "scrape_s_max": round(max(s for s, _ in scrapes), 3),
            "queues_route_s_median": round(statistics.median(queues), 3),
            "longest_redis_call_us": longest,
            "sharqd_cpu_s_per_scrape": round(cpu_per_scrape, 3),
            "scrape_bytes": len(scrapes[-1][1]),
            "scrape_every_s": args.every,
            "enqueue_alone": summary([t for t, _ in quiet]),
            "enqueue_during_scrapes": summary(during),
            "enqueue_between_scrapes": summary(between),
            "enqueue_with_scrapes_all": summary([t for t, _ in busy]),
        }
        print(f"{args.types} types, {args.queues} queues: scrape {result['scrape_s_median']} s "
              f"(max {result['scrape_s_max']} s, {result['scrape_bytes']} bytes, "
              f"{result['sharqd_cpu_s_per_scrape']} s of sharqd CPU), "
              f"/queues/ {result['queues_route_s_median']} s, longest Redis call "
              f"{longest} µs")
        print(f"enqueue, no scrapes:      {result['enqueue_alone']}")
        print(f"enqueue, during a scrape: {result['enqueue_during_scrapes']}")
        print(f"enqueue, between scrapes: {result['enqueue_between_scrapes']} "
              f"(a scrape every {args.every} s)")
        print(f"enqueue, all of that run: {result['enqueue_with_scrapes_all']}")
        print(json.dumps(result))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
