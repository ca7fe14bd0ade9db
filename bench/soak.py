"""
Soak: a sharqd of its own (own redis-server, loopback) under 10 minutes of
mixed load at about half of the measured capacity (bench/RESULTS.md):
single and batch enqueues, long-poll batch dequeues, batch finishes, jobs
left unfinished that expire into dead letters, dead letters listed and
purged.  Every 10 s it samples sharqd's RSS and Redis' used_memory; after
the first minute both must stay within 10 % of their range's low end, and
no answer may be an error other than the expected 404s.

    .venv/bin/python bench/soak.py [--minutes 10] [--jobs 1000] [--out bench/RESULTS-soak.md]

`make soak` runs it with the defaults.  Not in CI: it takes the minutes.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lp_harness import Client, Servers  # noqa: E402

QTYPE = "soak"
BATCH = 20
COUNTER_LIFETIME = 660  # s: the PEXPIRE of a minute's metric counters
DROP_EVERY = 50  # one job in 50 is never finished: it expires into a dead letter


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def redis_memory_mb(port):
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(b"INFO memory\r\n")
        data = b""
        while b"used_memory:" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    used = int(data.split(b"used_memory:", 1)[1].split(b"\r\n", 1)[0])
    return used / 1024 / 1024


class Soak:
    def __init__(self, port, jobs_per_second):
        self.port = port
        self.rate = jobs_per_second
        self.running = True
        self.answers = Counter()    # (what, status)
        self.errors = Counter()     # unexpected answers
        self.enqueued = self.finished = self.delivered = 0
        self.serial = 0

    def count(self, what, status, expected):
        self.answers[(what, status)] += 1
        if status not in expected:
            self.errors[(what, status)] += 1

    def job(self, queue_id):
        self.serial += 1
        drop = self.serial % DROP_EVERY == 0
        return {"queue_id": f"q{queue_id}", "job_id": f"j{self.serial}", "interval": 0,
                "payload": {"n": self.serial, "drop": drop},
                "requeue_limit": 0 if drop else 3}

    async def produce(self, share):
        """Half the jobs as single enqueues, half in batches of BATCH."""
        client = await Client(self.port).connect()
        started, sent = time.monotonic(), 0
        while self.running:
            due = (time.monotonic() - started) * self.rate * share
            if sent >= due:
                await asyncio.sleep(0.005)
                continue
            if (sent // BATCH) % 2:
                jobs = [self.job(i % 100) for i in range(BATCH)]
                status, _ = await client.request("POST", f"/enqueue/{QTYPE}/",
                                                 json.dumps({"jobs": jobs}).encode())
                self.count("batch enqueue", status, (201,))
                sent += BATCH
            else:
                job = self.job(sent % 100)
                queue_id = job.pop("queue_id")
                status, _ = await client.request("POST", f"/enqueue/{QTYPE}/{queue_id}/",
                                                 json.dumps(job).encode())
                self.count("enqueue", status, (201,))
                sent += 1
            self.enqueued = self.serial

    async def work(self):
        client = await Client(self.port).connect()
        while self.running:
            status, body = await client.request(
                "GET", f"/dequeue/{QTYPE}/?wait=2&count={BATCH}&lease=2000")
            self.count("dequeue", status, (200, 404))
            if status != 200:
                continue
            jobs = json.loads(body)["jobs"]
            self.delivered += len(jobs)
            done = [{"queue_id": j["queue_id"], "job_id": j["job_id"]}
                    for j in jobs if not j["payload"]["drop"]]
            if done:
                status, _ = await client.request("POST", f"/finish/{QTYPE}/",
                                                 json.dumps({"jobs": done}).encode())
                self.count("batch finish", status, (200,))
                self.finished += len(done)

    async def dead_letters(self):
        client = await Client(self.port).connect()
        ticks = 0
        while self.running:
            await asyncio.sleep(5)
            ticks += 1
            status, _ = await client.request("GET", f"/deadletters/{QTYPE}/?limit=10")
            self.count("dead letters", status, (200,))
            if ticks % 2 == 0:  # every 10 s
                status, _ = await client.request("DELETE", f"/deadletters/{QTYPE}/")
                self.count("purge dead letters", status, (200,))


async def run(args, servers):
    soak = Soak(servers.port, args.jobs)
    tasks = [asyncio.create_task(soak.produce(0.5)) for _ in range(2)]
    tasks += [asyncio.create_task(soak.work()) for _ in range(4)]
    tasks.append(asyncio.create_task(soak.dead_letters()))
    samples = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            await asyncio.sleep(10)
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()
            sample = (round(time.monotonic() - started), rss_mb(servers.sharqd.pid),
                      redis_memory_mb(servers.redis_port), soak.enqueued, soak.delivered,
                      soak.finished, sum(soak.errors.values()))
            samples.append(sample)
            print("t=%4d s  sharqd RSS %.1f MB  redis %.2f MB  enqueued %d  delivered %d"
                  "  finished %d  errors %d" % sample, flush=True)
    finally:
        soak.running = False
        await asyncio.sleep(2.5)  # the long-polls end
        for task in tasks:
            task.cancel()
    return soak, samples


def spread(values):
    low = min(values)
    return (max(values) - low) / low * 100


def report(args, soak, samples, cpu):
    steady = [s for s in samples if s[0] > 60] or samples
    rss_spread = spread([s[1] for s in steady])
    redis_spread = spread([s[2] for s in steady])
    # the per-minute metric counters live 11 minutes (common.lua): until
    # then Redis holds more of them each minute, by design
    settled = [s for s in samples if s[0] > COUNTER_LIFETIME]
    settled_note = (f" Once the per-minute metric counters reach their 11-minute "
                    f"lifetime (t > {COUNTER_LIFETIME} s), Redis' used_memory varies by "
                    f"{spread([s[2] for s in settled]):.1f} %." if len(settled) > 2 else "")
    seconds = samples[-1][0]
    flat = rss_spread <= 10 and redis_spread <= 10
    lines = [
        f"# Soak: {args.minutes:g} minutes of mixed load",
        "",
        f"`make soak` (`bench/soak.py --minutes {args.minutes} --jobs {args.jobs}`), one "
        f"sharqd (workers 1) and its own redis-server on loopback, on {platform.node()} "
        f"({os.cpu_count()} cores, **shared with other developers' test runs while "
        "this ran**, so the rates are what the machine gave, not sharqd's ceiling).",
        "",
        f"Load: {args.jobs} jobs/s offered, about half of the measured capacity "
        "(bench/RESULTS.md: 2,218 jobs/s dequeue+finish, 4,457 enqueues/s at "
        f"workers 1); half as single enqueues, half in batches of {BATCH}; 4 workers "
        f"long-poll `?wait=2&count={BATCH}&lease=2000` and finish in batches; one job in "
        f"{DROP_EVERY} is never finished and has `requeue_limit` 0, so it expires into "
        "a dead letter; dead letters are listed every 5 s and purged every 10 s.",
        "",
        f"Result over {seconds} s: {soak.enqueued:,} jobs enqueued, {soak.delivered:,} "
        f"delivered, {soak.finished:,} finished ({soak.finished / seconds:,.0f} jobs/s); "
        f"unexpected answers: {sum(soak.errors.values())}"
        + (f" {dict(soak.errors)}" if soak.errors else "") + ".",
        f"After the first minute sharqd's RSS varied by {rss_spread:.1f} % and Redis' "
        f"used_memory by {redis_spread:.1f} % (floor: 10 %): "
        + ("**flat**." if flat else "**not flat**.") + settled_note,
        f"sharqd used {cpu:.0f} s of CPU ({cpu / seconds * 100:.0f} % of a core).",
        "",
        "Answers: " + ", ".join(f"{what} {status}: {n:,}" for (what, status), n in
                                sorted(soak.answers.items())) + ".",
        "",
        "| t (s) | sharqd RSS (MB) | Redis used_memory (MB) | enqueued | delivered | finished | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += ["| %d | %.1f | %.2f | %d | %d | %d | %d |" % s for s in samples]
    return "\n".join(lines) + "\n", flat and not soak.errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs/s offered")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                      "RESULTS-soak.md"))
    args = parser.parse_args()
    # short leases and requeue passes, so unfinished jobs reach the dead letters
    with Servers(sharq_options="job_requeue_interval : 500",
                 server_options="") as servers:
        from lp_harness import cpu_seconds
        soak, samples = asyncio.run(run(args, servers))
        cpu = cpu_seconds(servers.sharqd.pid)
    text, ok = report(args, soak, samples, cpu)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
