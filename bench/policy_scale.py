#!/usr/bin/env python3
"""
Redis time per dequeue with rate policies in force (`make bench-policy`).
Stdlib only; starts its own redis-server (free port, no persistence).

For each size N (1, 1,000, 100,000 queues of one type): half the queues are
plain and ready with one job each; a quarter are paused (a policy with
"paused": true, one pending job) and a quarter at their max_active cap (1
active job, one pending).  Held queues are out of the ready set, so the
dequeue should not see them.  Then K rounds visit every size in turn:
dequeue, finish that job, enqueue a new one into the same queue (the ready
queues stay N / 2).  The Redis time of each dequeue is its SLOWLOG entry
(slowlog-log-slower-than 0), as bench/run.py takes it.

Modes: "plain" (the ready queues have no policy of their own) and "rated"
(each has rate 1000/s, burst 10: the GCRA path).  With --baseline REV, the
plain mode is also run with the scripts of git revision REV (no held
queues: REV may predate policies), for a before/after of the same machine.

Figures only: no pass/fail.  On a shared machine compare medians taken in
the same run (the sizes and modes are interleaved so load hits all alike).
"""

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from resp import Redis, RespError  # noqa: E402

PREFIX = "bp"
LUA = "sharqd/queue/lua"
DAY_MS = 86_400_000


def lua_text(name, rev):
    if rev is None:
        return (ROOT / LUA / name).read_bytes()
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{LUA}/{name}"],
                          check=True, capture_output=True).stdout


class Scripts:
    """The scripts as sharqd sends them (common.lua + "\\n" + op)."""

    def __init__(self, r, rev=None, ops=("enqueue", "dequeue", "finish", "policy")):
        common = lua_text("common.lua", rev)
        self.sha = {}
        for op in ops:
            text = common + b"\n" + lua_text(f"{op}.lua", rev)
            self.sha[op] = r.call("SCRIPT", "LOAD", text).decode()
            assert self.sha[op] == hashlib.sha1(text).hexdigest()

    def cmd(self, op, qtype, now, *args):
        return ["EVALSHA", self.sha[op], 0, f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, now, *args]


def check(replies, what):
    bad = [r for r in replies if isinstance(r, RespError)]
    if bad:
        raise SystemExit(f"{what}: {len(bad)} errors, first: {bad[0]}")


def fill(r, s, qtype, n, held, rated):
    """n queues: n - held plain ready, held / 2 paused, held / 2 capped."""
    now = r.call("TIME")
    t0 = int(now[0]) * 1000 + int(now[1]) // 1000 - 10_000
    paused, capped = held // 2, held - held // 2
    cmds = []
    for i in range(capped):  # capped first: the dequeues below take them
        q = f"c{i}"
        cmds += [s.cmd("policy", qtype, t0, "put", q, "", "", "1", ""),
                 s.cmd("enqueue", qtype, t0, q, "a", 0, b"{}", -1, ""),
                 s.cmd("enqueue", qtype, t0, q, "b", 0, b"{}", -1, "")]
    check(r.pipeline(cmds), "fill capped")
    check(r.pipeline([s.cmd("dequeue", qtype, t0 + 1, DAY_MS) for _ in range(capped)]),
          "cap")
    cmds = []
    for i in range(paused):
        q = f"p{i}"
        cmds += [s.cmd("policy", qtype, t0 + 2, "put", q, "", "", "", "1"),
                 s.cmd("enqueue", qtype, t0 + 2, q, "a", 0, b"{}", -1, "")]
    for i in range(n - held):
        q = f"r{i}"
        if rated:
            cmds.append(s.cmd("policy", qtype, t0 + 3, "put", q, "1000.0", "10", "", ""))
        cmds.append(s.cmd("enqueue", qtype, t0 + 3, q, "a", 0, b"{}", -1, ""))
    check(r.pipeline(cmds), "fill ready")
    return r.call("ZCARD", f"{PREFIX}:{{{qtype}}}:ready")


def collect(r, shas, into):
    n = r.call("SLOWLOG", "LEN")
    if not n:
        return
    entries = r.call("SLOWLOG", "GET", n)
    r.call("SLOWLOG", "RESET")
    if n >= 20000:
        raise SystemExit("SLOWLOG overflowed")
    # args: EVALSHA sha 0 base prefix type now ...
    into.extend((e[3][5], e[2]) for e in entries
                if len(e[3]) > 5 and e[3][0].upper() == b"EVALSHA" and e[3][1] in shas)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,1000,100000")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--baseline", metavar="REV", help="also time this git revision's scripts")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="sharqd-bench-policy-"))
    sys.path.insert(0, str(ROOT / "tests"))
    from support import free_port
    port = free_port()
    proc = subprocess.Popen([args.redis_server, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp),
                             "--slowlog-max-len", "20000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                r = Redis(port=port)
                r.call("PING")
                break
            except (OSError, RespError):
                time.sleep(0.1)
        version = r.info("server")["redis_version"]
        runs = []  # (label, size, qtype, scripts)
        new = Scripts(r)
        for n in sizes:
            held = n // 2 if n > 1 else 0
            for mode, rated in (("plain", False), ("rated", True)):
                qtype = f"{mode}{n}"
                ready = fill(r, new, qtype, n, held, rated)
                runs.append((mode, n, qtype, new, ready, held))
            if args.baseline:
                old = Scripts(r, args.baseline, ("enqueue", "dequeue", "finish"))
                qtype = f"base{n}"
                ready = fill(r, old, qtype, n - held, 0, False)
                runs.append((f"plain @{args.baseline}", n, qtype, old, ready, 0))
        shas = {run[3].sha["dequeue"].encode() for run in runs}
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        r.call("SLOWLOG", "RESET")
        entries = []
        for i in range(args.rounds):
            if i % 20 == 0:
                collect(r, shas, entries)
            k = i % len(runs)
            for _, _, qtype, s, _, _ in runs[k:] + runs[:k]:
                job = r.call(*s.cmd("dequeue", qtype, "", 60_000))
                if not isinstance(job, list):
                    raise SystemExit(f"{qtype}: nothing to dequeue ({job!r})")
                qid = job[0].decode()
                r.call(*s.cmd("finish", qtype, "", qid, job[1].decode(), *(
                    [""] if s is new else [])))
                r.call(*s.cmd("enqueue", qtype, "", qid, f"x{i}", 0, b"{}", -1, ""))
        collect(r, shas, entries)
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        print(f"Redis {version}; {args.rounds} dequeues per row; Redis time per dequeue "
              f"(SLOWLOG, us)\n")
        print("| scripts | queues | ready | held (paused + capped) | median | p10 | p99 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        medians = {}
        for mode, n, qtype, _, ready, held in runs:
            us = sorted(d for t, d in entries if t == qtype.encode())
            med = statistics.median(us)
            medians[(mode, n)] = med
            print(f"| {mode} | {n:,} | {ready:,} | {held:,} | {med:g} | "
                  f"{us[len(us) // 10]:g} | {us[int(0.99 * (len(us) - 1))]:g} |")
        big, small = max(sizes), min(sizes)
        for mode in ("plain", "rated"):
            print(f"\n{mode}: {big:,} queues / {small:,}: "
                  f"{medians[(mode, big)] / medians[(mode, small)]:.2f}x (floor 1.5x)")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
