"""
Batch bench: one client, one keep-alive connection, to a sharqd of its own
(loopback, own redis-server, `twistd -n sharq`).

  1. batch enqueue: --batches batches of --size jobs (POST /enqueue/<type>/)
  2. single enqueue, for comparison: --singles jobs one request each
  3. batch dequeue: GET /dequeue/<type>/?count=100 until the jobs are gone
  4. batch finish: POST /finish/<type>/ of what was dequeued, 1,000 a call

    .venv/bin/python bench/batch_enqueue.py [--batches 100] [--size 1000]

Jobs go to --queues queues (interval 0) with a ~60-byte payload.
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lp_harness import Client, Servers, cpu_seconds  # noqa: E402


def batch_body(start, size, queues):
    return json.dumps({"jobs": [
        {"queue_id": f"q{k % queues}", "job_id": f"j{k}", "interval": 0,
         "payload": {"to": "+15550100", "text": f"message number {k}"}}
        for k in range(start, start + size)]}).encode()


async def run(args, servers):
    client = await Client(servers.port).connect()
    pid = servers.sharqd.pid

    # 1. batch enqueue (bodies built before the clock starts)
    bodies = [batch_body(b * args.size, args.size, args.queues) for b in range(args.batches)]
    redis = servers.redis.pid
    cpu0, rcpu0, t0 = cpu_seconds(pid), cpu_seconds(redis), time.perf_counter()
    for body in bodies:
        status, answer = await client.request("POST", "/enqueue/bench/", body)
        if status != 201 or b'"failure"' in answer:
            raise RuntimeError(f"batch enqueue answered {status}: {answer[:300]}")
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    rcpu = cpu_seconds(redis) - rcpu0
    total = args.batches * args.size
    print(f"batch enqueue: {total} jobs in {args.batches} batches of {args.size}: "
          f"{elapsed:.2f} s, {total / elapsed:,.0f} jobs/s "
          f"({elapsed / args.batches * 1000:.1f} ms a batch; CPU per batch: sharqd "
          f"{cpu / args.batches * 1000:.1f} ms, redis-server "
          f"{rcpu / args.batches * 1000:.1f} ms)", flush=True)

    # 2. single enqueue
    singles = [json.dumps({"job_id": f"s{k}", "interval": 0, "payload": {"k": k}}).encode()
               for k in range(args.singles)]
    t0 = time.perf_counter()
    for k, body in enumerate(singles):
        status, _ = await client.request("POST", f"/enqueue/single/q{k % args.queues}/", body)
        assert status == 201, status
    elapsed = time.perf_counter() - t0
    print(f"single enqueue (same client, for comparison): {args.singles} jobs: "
          f"{args.singles / elapsed:,.0f} jobs/s", flush=True)

    # 3. batch dequeue
    taken = []
    cpu0, rcpu0, t0 = cpu_seconds(pid), cpu_seconds(redis), time.perf_counter()
    calls = 0
    while True:
        status, answer = await client.request("GET", "/dequeue/bench/?count=100&lease=600000")
        calls += 1
        if status == 404:
            break
        taken += [(j["queue_id"], j["job_id"]) for j in json.loads(answer)["jobs"]]
    elapsed = time.perf_counter() - t0
    assert len(taken) == total, (len(taken), total)
    print(f"batch dequeue (?count=100): {len(taken)} jobs in {calls} calls: "
          f"{len(taken) / elapsed:,.0f} jobs/s (CPU per call: sharqd "
          f"{(cpu_seconds(pid) - cpu0) / calls * 1000:.2f} ms, redis-server "
          f"{(cpu_seconds(redis) - rcpu0) / calls * 1000:.2f} ms)", flush=True)

    # 4. batch finish
    t0 = time.perf_counter()
    for i in range(0, len(taken), 1000):
        body = json.dumps({"jobs": [{"queue_id": q, "job_id": j}
                                    for q, j in taken[i:i + 1000]]}).encode()
        status, answer = await client.request("POST", "/finish/bench/", body)
        if status != 200 or b'"failure"' in answer:
            raise RuntimeError(f"batch finish answered {status}: {answer[:300]}")
    elapsed = time.perf_counter() - t0
    print(f"batch finish (1,000 a call): {len(taken)} jobs: "
          f"{len(taken) / elapsed:,.0f} jobs/s", flush=True)
    client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--singles", type=int, default=5000)
    parser.add_argument("--limit", type=float, default=120.0, help="give up after seconds")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    with Servers() as servers:
        asyncio.run(asyncio.wait_for(run(args, servers), args.limit))


if __name__ == "__main__":
    main()
