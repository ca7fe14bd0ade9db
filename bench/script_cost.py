#!/usr/bin/env python3
"""
Redis time per queue operation: the scripts of this tree run on a redis-server
of their own, called directly (no sharqd, no HTTP), and Redis' own
`INFO commandstats` gives the microseconds it spent per EVALSHA.  The client
is not timed, so a busy machine moves the figures less than wall-clock rates.

    .venv/bin/python bench/script_cost.py [--n 20000] [--queues 1000] [--runs 3]

Prints µs per call for enqueue, dequeue and finish (median of the runs) and
a JSON line for scripts.

    .venv/bin/python bench/script_cost.py --instructions [--n 4000] [--queues 200]

runs redis-server under `valgrind --tool=callgrind`, counting only what it
runs inside processCommand (the commands the client sends, the scripts'
own calls included; not the event loop, cron or socket reads), and prints
instructions per call instead: the same on a busy machine as on a quiet
one, so before/after comparisons hold where µs do not.  (This machine's
perf has no hardware counters: `perf stat -e instructions` is not
supported here.)  4,000 jobs over 200 queues: 20 jobs a queue as in the µs
run, and a ready set over 128 queues, a skiplist as with 1,000 (under 128
it is a listpack, where each ZADD costs about 30,000 instructions).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from hotpath import Instructions  # noqa: E402
from resp import Redis  # noqa: E402
from servers import RedisServer, free_port, stop_group  # noqa: E402

from sharqd.queue.operations import SCRIPTS  # noqa: E402

PREFIX = "bench"


def call(redis, name, qtype, *args):
    script = SCRIPTS[name]
    head = (f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, "")
    try:
        return redis.call(b"EVALSHA", script.sha, 0, *head, *args)
    except Exception as e:
        if not str(e).startswith("NOSCRIPT"):
            raise
        return redis.call(b"EVAL", script.source, 0, *head, *args)


def usec_per_call(redis):
    """(µs of Redis time per EVALSHA, Redis commands the script ran per call)."""
    stats = {}
    for line in redis.call(b"INFO", b"commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            stats[name] = dict(kv.split("=") for kv in rest.split(","))
    calls = int(stats["evalsha"]["calls"])
    inner = sum(int(s["calls"]) for name, s in stats.items()
                if name not in ("evalsha", "eval", "config|resetstat", "info"))
    return float(stats["evalsha"]["usec_per_call"]), round(inner / calls, 2)


def lifecycle(redis, n, queues, measure):
    """n enqueues, n dequeues and n finishes; measure(op, action) gives
    the figures of one group."""
    redis.call(b"FLUSHALL")
    for name in ("enqueue", "dequeue", "finish"):  # load the scripts
        redis.call(b"SCRIPT", b"LOAD", SCRIPTS[name].source)
    taken = []

    def enqueue():
        for i in range(n):
            call(redis, "enqueue", "sms", f"q{i % queues}", f"j{i}", 0,
                 b'{"hello": "world"}', -1, "")

    def dequeue():
        taken.extend(call(redis, "dequeue", "sms", 600000) for _ in range(n))

    def finish():
        for job in taken:
            call(redis, "finish", "sms", job[0], job[1], "")

    return {op: measure(op, action) for op, action in
            (("enqueue", enqueue), ("dequeue", dequeue), ("finish", finish))}


def run_once(redis, n, queues):
    def measure(op, action):
        redis.call(b"CONFIG", b"RESETSTAT")
        action()
        return usec_per_call(redis)
    return lifecycle(redis, n, queues, measure)


def callgrind_redis(tmp):
    """redis-server under callgrind, collecting inside processCommand only."""
    port = free_port()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
         "--collect-atstart=no", "--toggle-collect=processCommand",
         shutil.which("redis-server") or "/usr/bin/redis-server",
         "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), "--hz", "1"],
        cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            redis = Redis(port=port, timeout=300)
            redis.call(b"PING")
            return proc, redis
        except OSError:
            time.sleep(0.5)
    stop_group(proc, "redis-server under valgrind")
    raise SystemExit("redis-server did not answer within 120 s under valgrind")


def instructions(n, queues, runs):
    """Instructions Redis runs per script call (median of the runs)."""
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-script-instr-"))
    proc, redis = callgrind_redis(tmp)
    meter = Instructions(proc.pid, tmp)
    try:
        def measure(op, action):
            meter.read()  # a dump: the count starts afresh
            action()
            return meter.read() / n
        lifecycle(redis, 200, queues, lambda op, action: action())  # warm up
        runs = [lifecycle(redis, n, queues, measure) for _ in range(runs)]
    finally:
        redis.close()
        stop_group(proc, "redis-server under valgrind", grace=30)
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {op: round(statistics.median(r[op] for r in runs)) for op in runs[0]}
    for op, count in medians.items():
        print(f"{op:8s} {count:>9,} instructions of Redis per call "
              f"(runs: {', '.join(f'{r[op]:,.0f}' for r in runs)})")
    print(f"{'total':8s} {sum(medians.values()):>9,} per lifecycle")
    print(json.dumps({"instructions_per_call": medians, "n": n, "queues": queues}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int,
                        help="calls per operation (20000; 4000 with --instructions)")
    parser.add_argument("--queues", type=int,
                        help="queues the jobs are spread over (1000; 200 with --instructions: "
                        "20 jobs a queue either way)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per call, Redis under callgrind")
    args = parser.parse_args()
    if args.instructions:
        return instructions(args.n or 4000, args.queues or 200, args.runs)
    args.n, args.queues = args.n or 20000, args.queues or 1000
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-script-cost-"))
    server = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", tmp)
    try:
        redis = server.client
        runs = [run_once(redis, args.n, args.queues) for _ in range(args.runs)]
        medians = {op: statistics.median(r[op][0] for r in runs) for op in runs[0]}
        commands = {op: runs[0][op][1] for op in runs[0]}
        for op, usec in medians.items():
            print(f"{op:8s} {usec:6.2f} µs of Redis time per call, {commands[op]} "
                  f"commands inside (runs: {', '.join(f'{r[op][0]:.2f}' for r in runs)})")
        print(json.dumps({"usec_per_call": medians, "commands_per_call": commands,
                          "n": args.n, "queues": args.queues}))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
