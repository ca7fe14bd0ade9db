#!/usr/bin/env python3
"""
Redis time per queue operation: the scripts of this tree run on a redis-server
of their own, called directly (no sharqd, no HTTP), and Redis' own
`INFO commandstats` gives the microseconds it spent per EVALSHA.  The client
is not timed, so a busy machine moves the figures less than wall-clock rates.

    .venv/bin/python bench/script_cost.py [--n 20000] [--queues 1000] [--runs 3]

Prints µs per call for enqueue, dequeue and finish (median of the runs) and
a JSON line for scripts.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from servers import RedisServer  # noqa: E402

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


def run_once(redis, n, queues):
    redis.call(b"FLUSHALL")
    for name in ("enqueue", "dequeue", "finish"):  # load the scripts
        redis.call(b"SCRIPT", b"LOAD", SCRIPTS[name].source)
    result = {}
    redis.call(b"CONFIG", b"RESETSTAT")
    for i in range(n):
        call(redis, "enqueue", "sms", f"q{i % queues}", f"j{i}", 0, b'{"hello": "world"}',
             -1, "")
    result["enqueue"] = usec_per_call(redis)
    redis.call(b"CONFIG", b"RESETSTAT")
    taken = [call(redis, "dequeue", "sms", 600000) for _ in range(n)]
    result["dequeue"] = usec_per_call(redis)
    redis.call(b"CONFIG", b"RESETSTAT")
    for job in taken:
        call(redis, "finish", "sms", job[0], job[1], "")
    result["finish"] = usec_per_call(redis)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
