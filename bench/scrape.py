#!/usr/bin/env python3
"""
The cost of a /prometheus scrape: a sharqd of this tree on a redis-server of
its own, filled straight in Redis with QUEUES queues over TYPES queue types
(one pending job each), then

1. the time of a scrape (GET /prometheus) and of GET /queues/ (median of
   `--scrapes`), and the longest single Redis call a scrape made (SLOWLOG);
2. the latency of sequential enqueues over HTTP (keep-alive) without
   scrapes, then while another process scrapes every `--every` seconds:
   the enqueues that overlapped a scrape and those that did not;
3. whether the enqueues that overlapped a scrape are within the noise of
   the others: the p50 and p99 of the overlapping enqueues set against
   those of `--resamples` sets of enqueues of the same run that overlapped
   no scrape, each set taken over windows as long as the scrapes were
   (placed at random in the gaps between scrapes).  "within noise" when
   both lie under the 95th percentile of the resampled ones.  With
   `--runs N` the enqueue phases are run N times on the same server.

The scraping process runs at nice 19 (`--scraper-nice`): it stands in for
Prometheus on another host, and on a 2-core machine its own CPU would
otherwise delay the enqueues during scrapes whatever sharqd does (with a
scrape of 1 type, 4 ms: p50 0.93 ms during scrapes against 0.40 between).

Run for 1,000 types x 100 queues and for 1 type x 100,000 queues:

    .venv/bin/python bench/scrape.py [--types 1000] [--queues 100000] [--every 2]

Prints one line per figure and a JSON line for scripts.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
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
    """[(seconds, whether a scrape was in flight, start)] of sequential
    enqueues (start on the monotonic clock, which every process shares)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i += 1
        body = json.dumps({"job_id": f"{tag}{i}", "interval": 0, "payload": {}})
        before = in_flight is not None and in_flight.value
        at = time.monotonic()
        started = time.perf_counter()
        conn.request("POST", f"/enqueue/latency/q{i % 100}/", body=body)
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - started
        out.append((took, bool(before or (in_flight is not None and in_flight.value)), at))
    return out


def scrape_loop(port, every, in_flight, stop, windows, nice):
    """Scrape every `every` s until stop; then send the (start, end) of
    each scrape, on the monotonic clock, through the pipe windows."""
    # The scraper stands in for Prometheus, which runs on another host: at
    # nice 19 its own CPU (reading 700 kB in Python) does not take a core
    # from the enqueuer, sharqd or Redis on a small machine, which would
    # show as a delay of the enqueues during scrapes even for a scrape
    # that costs sharqd nothing
    os.nice(nice)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    spans = []
    while not stop.is_set():
        in_flight.value = 1
        started = time.monotonic()
        timed_get(conn, "/prometheus")
        spans.append((started, time.monotonic()))
        in_flight.value = 0
        stop.wait(every)
    windows.send(spans)


def within_noise(busy, spans, resamples, seed=1):
    """Set the p50 and p99 of the enqueues that overlapped a scrape against
    those of sets of enqueues that overlapped none, each set gathered over
    windows as long as the scrapes (as many, placed at random in the gaps
    between them).  Returns the figures and the verdict."""
    during = [t for t, overlapped, _ in busy if overlapped]
    quiet = sorted((at, t) for t, overlapped, at in busy if not overlapped)
    starts = [at for at, _ in quiet]
    # the gaps between scrapes (and before the first, after the last), kept
    # clear of them by the longest enqueue
    margin = max(t for t, _, _ in busy)
    edges = [(starts[0], starts[0])] + spans + [(starts[-1], starts[-1])]
    gaps = [(a[1] + margin, b[0] - margin) for a, b in zip(edges, edges[1:])]
    lengths = [end - start for start, end in spans]
    rng = random.Random(seed)
    p50s, p99s = [], []
    for _ in range(resamples):
        sample = []
        for length in lengths:
            fits = [(a, b) for a, b in gaps if b - a > length]
            if not fits:
                continue
            a, b = rng.choices(fits, [b - a - length for a, b in fits])[0]
            start = rng.uniform(a, b - length)
            # enqueues that overlapped [start, start + length]
            lo = bisect_left(starts, start - margin)
            sample += [t for at, t in quiet[lo:bisect_left(starts, start + length)]
                       if at + t >= start]
        if len(sample) >= 100:
            s = summary(sample)
            p50s.append(s["p50_ms"])
            p99s.append(s["p99_ms"])
    d = summary(during)
    p50s.sort()
    p99s.sort()

    def rank(value, values):  # share of resampled values below value
        return round(bisect_left(values, value) / len(values), 3)
    top = int(len(p50s) * 0.95)
    result = {"during_p50_ms": d["p50_ms"], "during_p99_ms": d["p99_ms"],
              "resampled_p50_ms_median_p95": [p50s[len(p50s) // 2], p50s[top]],
              "resampled_p99_ms_median_p95": [p99s[len(p99s) // 2], p99s[top]],
              "p50_rank": rank(d["p50_ms"], p50s), "p99_rank": rank(d["p99_ms"], p99s),
              "resamples": len(p50s)}
    result["within_noise"] = d["p50_ms"] <= p50s[top] and d["p99_ms"] <= p99s[top]
    return result


def summary(latencies):
    ms = sorted(x * 1000 for x in latencies)
    return {"n": len(ms), "p50_ms": round(ms[len(ms) // 2], 3),
            "p99_ms": round(ms[int(len(ms) * 0.99)], 3), "max_ms": round(ms[-1], 3)}


def enqueue_run(port, args, tag):
    """Enqueues alone for args.seconds, then as long again while another
    process scrapes every args.every s: their latencies, split."""
    quiet = enqueue_latencies(port, args.seconds, tag + "a")
    # scrapes from another process (every --every seconds; 0: back to
    # back) while this one enqueues; each enqueue is marked by whether
    # a scrape was in flight while it was
    in_flight = multiprocessing.Value("i", 0)
    stop = multiprocessing.Event()
    receive, send = multiprocessing.Pipe(duplex=False)
    scraper = multiprocessing.Process(target=scrape_loop,
                                      args=(port, args.every, in_flight, stop, send,
                                            args.scraper_nice))
    scraper.start()
    busy = enqueue_latencies(port, args.seconds, tag + "b", in_flight)
    stop.set()
    spans = receive.recv()
    scraper.join()
    return {
        "scrapes": len(spans),
        "scrape_s_median_under_load": round(statistics.median(b - a for a, b in spans), 3),
        "enqueue_alone": summary([t for t, _, _ in quiet]),
        "enqueue_during_scrapes": summary([t for t, overlapped, _ in busy if overlapped]),
        "enqueue_between_scrapes": summary([t for t, overlapped, _ in busy if not overlapped]),
        "enqueue_with_scrapes_all": summary([t for t, _, _ in busy]),
        "noise": within_noise(busy, spans, args.resamples),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=100000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--every", type=float, default=2.0,
                        help="seconds between scrapes while enqueuing (0: back to back)")
    parser.add_argument("--scraper-nice", type=int, default=19,
                        help="niceness of the scraping process (0: as the others)")
    parser.add_argument("--runs", type=int, default=1,
                        help="times the enqueue phases are run on the same server")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="resampled sets of enqueues between scrapes (noise)")
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

        result = {
            "types": args.types, "queues": args.queues,
            "scrape_s_median": round(statistics.median(s for s, _ in scrapes), 3),
            "scrape_s_max": round(max(s for s, _ in scrapes), 3),
            "queues_route_s_median": round(statistics.median(queues), 3),
            "longest_redis_call_us": longest,
            "sharqd_cpu_s_per_scrape": round(cpu_per_scrape, 3),
            "scrape_bytes": len(scrapes[-1][1]),
            "scrape_every_s": args.every,
            "load_average": os.getloadavg()[0],
            "runs": [],
        }
        print(f"{args.types} types, {args.queues} queues: scrape {result['scrape_s_median']} s "
              f"(max {result['scrape_s_max']} s, {result['scrape_bytes']} bytes, "
              f"{result['sharqd_cpu_s_per_scrape']} s of sharqd CPU), "
              f"/queues/ {result['queues_route_s_median']} s, longest Redis call "
              f"{longest} µs; load average {result['load_average']:.2f}")
        for run in range(args.runs):
            figures = enqueue_run(port, args, f"r{run}")
            result["runs"].append(figures)
            print(f"run {run + 1} of {args.runs}:")
            for key in ("enqueue_alone", "enqueue_during_scrapes", "enqueue_between_scrapes",
                        "enqueue_with_scrapes_all"):
                print(f"  {key}: {figures[key]}")
            noise = figures["noise"]
            print(f"  during p50 {noise['during_p50_ms']} ms (rank {noise['p50_rank']}), "
                  f"p99 {noise['during_p99_ms']} ms (rank {noise['p99_rank']}) against "
                  f"{noise['resamples']} resampled sets of enqueues between scrapes: p50 "
                  f"median/95th {noise['resampled_p50_ms_median_p95']}, p99 median/95th "
                  f"{noise['resampled_p99_ms_median_p95']} ms: "
                  + ("within noise" if noise["within_noise"] else "ABOVE noise"))
        verdicts = [r["noise"]["within_noise"] for r in result["runs"]]
        print(f"within noise in {sum(verdicts)} of {len(verdicts)} runs")
        print(json.dumps(result))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
