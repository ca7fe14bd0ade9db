"""
Long-poll bench: N clients wait on `GET /dequeue/bench/?wait=...` of a
sharqd of its own (loopback, own redis-server, `twistd -n sharq`).

  1. idle: the N clients wait with nothing to do; sharqd's (and Redis') CPU
     over a window
  2. trickle: jobs enqueued one by one at a steady rate; delay from the
     enqueue request to delivery (and from its 201 to delivery)
  3. burst: one batch of N jobs enqueued at once; delay to each delivery
  4. interval: one queue with interval 100 ms and 50 jobs; how late each
     delivery is after the previous one + 100 ms (the job "becoming ready")

    .venv/bin/python bench/longpoll.py [--clients 1000] [--idle 10]
    .venv/bin/python bench/longpoll.py --only-burst [--bursts 5] [--workers 2] [--save]

The N waiting clients run in a process of their own, a plain epoll loop
(lp_harness.PollingClients: about 10-20 us of CPU per answer, JSON decoded
here after the fact), so that they take little of the cores they share
with sharqd and Redis and read each answer as it comes; each burst prints
their CPU.  `--save` keeps the burst's figures in bench/RESULTS.json for
bench/floors.py (`make bench`).  Bounded in time: the whole run is
cancelled after --limit seconds.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import figures  # noqa: E402
from lp_harness import (Client, PollingClients, Servers, cpu_seconds,  # noqa: E402
                        percentile, tree_cpu_seconds)


class Waiters:
    """N clients, each on its own connection, asking the same long-poll
    dequeue again as soon as they have an answer: a PollingClients process
    (lp_harness.py), the answers' JSON decoded here after the fact."""

    def __init__(self, port, n, wait):
        self.port = port
        self.n = n
        self.request = (f"GET /dequeue/bench/?wait={wait}&lease=600000 HTTP/1.1\r\n"
                        f"Host: bench\r\n\r\n").encode()
        self.answers = []  # (time, body) of each 200
        self.clients = None

    def collect(self):
        """The answers so far (the 200s; a 404 is a wait that ran out)."""
        for now, status, body in self.clients.fetch():
            if status == 200:
                self.answers.append((now, body))
            elif status != 404:
                raise RuntimeError(f"dequeue answered {status}: {body[:200]}")
        return len(self.answers)

    @property
    def received(self):
        """(time, queue_id, job_id, payload) of each job delivered."""
        self.collect()
        return [(t, *_fields(body)) for t, body in self.answers]

    async def start(self, servers):
        self.clients = PollingClients(self.port, self.n, self.request)
        await self.all_waiting(servers)

    async def all_waiting(self, servers):
        """Until every client's request is read and waits in sharqd."""
        while servers.waiting() < self.n:
            await asyncio.sleep(0.05)

    async def until(self, count, timeout=30):
        try:
            await self.clients.tell(count, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"only {self.collect()} of {count} jobs delivered") from None
        if self.collect() < count:
            raise RuntimeError(f"only {len(self.answers)} of {count} jobs delivered")

    def cpu_seconds(self):
        return self.clients.cpu_seconds()

    def stop(self):
        self.clients.stop()


def _fields(body):
    job = json.loads(body)
    return job["queue_id"], job["job_id"], job["payload"]


def ms(values):
    return (f"p50 {percentile(values, 50) * 1000:.2f} ms, p99 {percentile(values, 99) * 1000:.2f} ms,"
            f" max {max(values) * 1000:.2f} ms (n={len(values)})")


async def run(args, servers):
    results = {}
    waiters = Waiters(servers.port, args.clients, args.wait)
    await waiters.start(servers)
    producer = await Client(servers.port).connect()

    sharqd = servers.sharqd.pid
    if not args.only_burst:
        await idle(args, servers, results)
        await trickle(args, waiters, producer, results)
    p99s, pooled = [], []
    for _ in range(args.bursts):
        await waiters.all_waiting(servers)
        await burst(args, servers, waiters, producer, sharqd, results)
        p99s.append(percentile(results["burst_from_ack"], 99))
        pooled += results["burst_from_ack"]
    results["burst_p99s"], results["burst_pooled"] = p99s, pooled
    if args.bursts > 1:
        print(f"burst: {args.bursts} bursts, 201 -> delivered p99 each: "
              f"{', '.join(f'{p * 1000:.0f}' for p in p99s)} ms; median "
              f"{percentile(p99s, 50) * 1000:.1f} ms; all deliveries: p99 "
              f"{percentile(pooled, 99) * 1000:.1f} ms", flush=True)
    if not args.only_burst:
        await interval(waiters, producer, results)
    waiters.stop()
    producer.close()
    return results


async def idle(args, servers, results):
    sharqd, redis = servers.sharqd.pid, servers.redis.pid
    c0, r0, t0 = tree_cpu_seconds(sharqd)[0], cpu_seconds(redis), time.monotonic()
    await asyncio.sleep(args.idle)
    c1, r1, t1 = tree_cpu_seconds(sharqd)[0], cpu_seconds(redis), time.monotonic()
    results["idle_sharqd_cpu_pct"] = 100 * (c1 - c0) / (t1 - t0)
    results["idle_redis_cpu_pct"] = 100 * (r1 - r0) / (t1 - t0)
    print(f"idle: {args.clients} clients waiting for {t1 - t0:.1f} s: sharqd CPU "
          f"{results['idle_sharqd_cpu_pct']:.2f} %, redis-server CPU "
          f"{results['idle_redis_cpu_pct']:.2f} %", flush=True)


async def trickle(args, waiters, producer, results):
    sent, acked = {}, {}
    base = len(waiters.received)
    for k in range(args.trickle):
        job_id = f"t{k}"
        body = json.dumps({"job_id": job_id, "interval": 0, "payload": {"k": k}}).encode()
        sent[job_id] = time.time()
        status, _ = await producer.request("POST", f"/enqueue/bench/tq{k % 50}/", body)
        acked[job_id] = time.time()
        assert status == 201, status
        await asyncio.sleep(1 / args.rate)
    await waiters.until(base + args.trickle)
    got = [r for r in waiters.received[base:] if r[2] in sent]
    from_sent = [t - sent[j] for t, _, j, _ in got]
    from_ack = [t - acked[j] for t, _, j, _ in got]
    results["trickle_from_request"] = from_sent
    print(f"trickle: {args.trickle} jobs at {args.rate}/s, {args.clients} clients waiting: "
          f"enqueue request -> delivered {ms(from_sent)}; enqueue 201 -> delivered "
          f"{ms(from_ack)}", flush=True)


def redis_cli(port, *command):
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True,
                          text=True, check=True).stdout


def slowlog_ms(lines):
    """The durations (ms) and commands of `redis-cli SLOWLOG GET` output."""
    found, k = [], 0
    while k + 2 < len(lines):
        if lines[k].strip().isdigit() and lines[k + 1].strip().isdigit() \
                and lines[k + 2].strip().isdigit():
            found.append(f"{int(lines[k + 2]) / 1000:.1f}")
            k += 3
        else:
            k += 1
    return ", ".join(found) or "none"


async def burst(args, servers, waiters, producer, sharqd, results):
    redis_cli(servers.redis_port, "CONFIG", "SET", "slowlog-log-slower-than", "1000")
    redis_cli(servers.redis_port, "SLOWLOG", "RESET")
    base = waiters.collect()
    jobs = [{"queue_id": f"bq{k}", "job_id": f"b{base}-{k}", "interval": 0, "payload": k}
            for k in range(args.clients)]
    body = json.dumps({"jobs": jobs}).encode()
    c0, b0 = tree_cpu_seconds(sharqd)[0], waiters.cpu_seconds()
    start = time.time()
    status, _ = await producer.request("POST", "/enqueue/bench/", body)
    acked_at = time.time()
    assert status == 201, status
    await waiters.until(base + args.clients)
    c1, b1 = tree_cpu_seconds(sharqd)[0], waiters.cpu_seconds()
    delays = [t - start for t, _ in waiters.answers[base:]]
    from_ack = [max(0.0, t - acked_at) for t, _ in waiters.answers[base:]]
    print(f"burst: {args.clients} jobs in one batch to {args.clients} waiting clients: "
          f"batch request -> delivered {ms(delays)}; batch 201 -> delivered "
          f"{ms(from_ack)} (batch 201 after "
          f"{(acked_at - start) * 1000:.1f} ms; sharqd CPU {c1 - c0:.2f} s for the "
          f"batch, {args.clients} answers and {args.clients} new waits; the clients' CPU "
          f"{b1 - b0:.2f} s)", flush=True)
    results["burst"] = delays
    slow = redis_cli(servers.redis_port, "SLOWLOG", "GET", "1000").split("\n")
    print(f"burst: Redis calls over 1 ms meanwhile: {slowlog_ms(slow)}", flush=True)
    results["burst_from_ack"] = from_ack


async def interval(waiters, producer, results):
    base = len(waiters.received)
    n = 50
    jobs = [{"queue_id": "paced", "job_id": f"p{k}", "interval": 100, "payload": k}
            for k in range(n)]
    status, _ = await producer.request("POST", "/enqueue/bench/",
                                       json.dumps({"jobs": jobs}).encode())
    assert status == 201, status
    await waiters.until(base + n, timeout=30)
    times = sorted(t for t, *_ in waiters.received[base:])
    late = [b - a - 0.100 for a, b in zip(times, times[1:])]
    print(f"interval: queue with interval 100 ms, {n} jobs: delivery after the previous "
          f"+ 100 ms (the next ready time) {ms(late)}", flush=True)
    results["interval"] = late


async def bounded(args, servers):
    return await asyncio.wait_for(run(args, servers), args.limit)


def save(args, results):
    """The burst's figures, for bench/floors.py."""
    figures.save("burst", {
        "clients": args.clients, "workers": args.workers, "bursts": args.bursts,
        "burst_p99_ms": [p * 1000 for p in results["burst_p99s"]],
        "p99_ms": percentile(results["burst_pooled"], 99) * 1000,
        "p50_ms": percentile(results["burst_pooled"], 50) * 1000}, quick=args.quick)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=60)
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--trickle", type=int, default=1000, help="jobs of the trickle phase")
    parser.add_argument("--rate", type=float, default=100.0, help="trickle jobs per second")
    parser.add_argument("--py-spy", help="path of py-spy: profile sharqd meanwhile")
    parser.add_argument("--profile-out", default="bench/profile-longpoll.txt")
    parser.add_argument("--only-burst", action="store_true",
                        help="skip the idle, trickle and interval phases")
    parser.add_argument("--workers", type=int, default=1, help="sharqd's [sharq-server] workers")
    parser.add_argument("--bursts", type=int, default=1,
                        help="bursts in a row (each reported, then their p99s)")
    parser.add_argument("--save", action="store_true",
                        help="keep the burst's figures in bench/RESULTS.json (make bench)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 bursts, figures marked as a smoke test's")
    parser.add_argument("--limit", type=float, default=120.0, help="give up after seconds")
    args = parser.parse_args()
    if args.quick:
        args.bursts = 2
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    with Servers(server_options=f"workers : {args.workers}\n") as servers:
        profiler = None
        if args.py_spy:  # sample sharqd from here on; collapsed stacks
            profiler = subprocess.Popen([
                args.py_spy, "record", "--pid", str(servers.sharqd.pid), "-r", "1000",
                "-f", "raw", *(["--native"] if os.environ.get("PYSPY_NATIVE") else []), "-o", args.profile_out], stdout=subprocess.DEVNULL)
        try:
            results = asyncio.run(bounded(args, servers))
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
    if args.save:
        save(args, results)


if __name__ == "__main__":
    main()
