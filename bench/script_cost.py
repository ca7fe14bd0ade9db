#!/usr/bin/env python3
"""
Redis time per queue operation: the scripts of this tree run on a redis-server
of their own, called directly (no sharqd, no HTTP), as sharqd calls them
(FCALL of the function library; --mode evalsha: EVALSHA of each script, as
on Redis 6.2), and Redis' own `INFO commandstats` gives the microseconds it
spent per call.  The client is not timed, so a busy machine moves the
figures less than wall-clock rates.  --callgrind counts instead the
instructions redis-server ran per call, under valgrind's callgrind (this
machine's CPU has no perf counters), a figure load does not move.

    .venv/bin/python bench/script_cost.py [--n 20000] [--queues 1000] [--runs 3]
        [--mode fcall|evalsha] [--callgrind]

Prints µs per call for enqueue, dequeue and finish (median of the runs) and
a JSON line for scripts.
"""

import argparse
import json
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from hotpath import Instructions  # noqa: E402
from processes import free_port  # noqa: E402
from resp import Redis  # noqa: E402
from servers import RedisServer, stop_group  # noqa: E402

from sharqd.queue.operations import LIBRARY, SCRIPTS  # noqa: E402

PREFIX = "bench"
COMMAND = {"fcall": "fcall", "evalsha": "evalsha"}  # mode -> its commandstats name


def call(redis, mode, name, qtype, *args):
    head = (f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, "")
    if mode == "fcall":
        return redis.call(b"FCALL", LIBRARY.functions[name], 0, *head, *args)
    return redis.call(b"EVALSHA", SCRIPTS[name].sha, 0, *head, *args)


def usec_per_call(redis, mode):
    """(µs of Redis time per call, Redis commands the script ran per call)."""
    stats = {}
    for line in redis.call(b"INFO", b"commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            stats[name] = dict(kv.split("=") for kv in rest.split(","))
    own = stats[COMMAND[mode]]
    calls = int(own["calls"])
    inner = sum(int(s["calls"]) for name, s in stats.items()
                if name not in ("evalsha", "eval", "fcall", "config|resetstat", "info"))
    return float(own["usec_per_call"]), round(inner / calls, 2)


class CallgrindRedis:
    """A redis-server of its own under `valgrind --tool=callgrind` (hz 1, so
    its timer adds little), and a client of it; count() gives the
    instructions it ran since the last count (hotpath.Instructions)."""

    def __init__(self, tmp):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp / 'callgrind.out'}",
             shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--hz", "1"],
            cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.meter = Instructions(self.proc.pid, tmp)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client = Redis(port=self.port)
                self.client.call(b"PING")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("redis-server did not start under valgrind")
                time.sleep(0.5)

    def count(self):
        return self.meter.read()

    def stop(self):
        stop_group(self.proc, "redis-server", grace=30)


class Uncounted:
    """The bench's plain redis-server: no instruction counts."""

    def __init__(self, tmp):
        self.server = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", tmp)
        self.client = self.server.client

    def count(self):
        return None

    def stop(self):
        self.server.stop()


def phase(server, action):
    """(action's result, instructions redis-server ran for it or None)."""
    server.count()  # a callgrind dump: counting starts afresh
    result = action()
    return result, server.count()


def run_once(server, n, queues, mode):
    redis = server.client
    redis.call(b"FLUSHALL")
    if mode == "fcall":
        redis.call(b"FUNCTION", b"FLUSH")
        redis.call(b"FUNCTION", b"LOAD", LIBRARY.code)
    else:
        for name in ("enqueue", "dequeue", "finish"):  # load the scripts
            redis.call(b"SCRIPT", b"LOAD", SCRIPTS[name].source)
    result = {}
    redis.call(b"CONFIG", b"RESETSTAT")
    _, counted = phase(server, lambda: [
        call(redis, mode, "enqueue", "sms", f"q{i % queues}", f"j{i}", 0,
             b'{"hello": "world"}', -1, "") for i in range(n)])
    result["enqueue"] = usec_per_call(redis, mode) + (counted,)
    redis.call(b"CONFIG", b"RESETSTAT")
    taken, counted = phase(server, lambda: [
        call(redis, mode, "dequeue", "sms", 600000) for _ in range(n)])
    result["dequeue"] = usec_per_call(redis, mode) + (counted,)
    redis.call(b"CONFIG", b"RESETSTAT")
    _, counted = phase(server, lambda: [
        call(redis, mode, "finish", "sms", job[0], job[1], "") for job in taken])
    result["finish"] = usec_per_call(redis, mode) + (counted,)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=sorted(COMMAND), default="fcall",
                        help="fcall (what sharqd calls on Redis >= 7) or evalsha (Redis 6.2)")
    parser.add_argument("--keep", help="with --callgrind: keep its dumps in this folder "
                        "(callgrind_annotate reads them)")
    parser.add_argument("--callgrind", action="store_true",
                        help="count redis-server's instructions per call (under callgrind: "
                             "use a small --n; its µs are valgrind's, not Redis')")
    args = parser.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="sharqd-script-cost-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    server = CallgrindRedis(tmp) if args.callgrind else Uncounted(tmp)
    try:
        runs = [run_once(server, args.n, args.queues, args.mode) for _ in range(args.runs)]
        medians = {op: statistics.median(r[op][0] for r in runs) for op in runs[0]}
        commands = {op: runs[0][op][1] for op in runs[0]}
        instructions = {op: (statistics.median(r[op][2] for r in runs) / args.n
                             if args.callgrind else None) for op in runs[0]}
        for op, usec in medians.items():
            counted = (f", {instructions[op]:,.0f} instructions" if args.callgrind else "")
            print(f"{op:8s} {usec:6.2f} µs of Redis time per {args.mode}{counted}, "
                  f"{commands[op]} commands inside "
                  f"(runs: {', '.join(f'{r[op][0]:.2f}' for r in runs)})")
        print(json.dumps({"mode": args.mode, "usec_per_call": medians,
                          "instructions_per_call": instructions,
                          "commands_per_call": commands, "n": args.n, "queues": args.queues}))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
