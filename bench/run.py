#!/usr/bin/env python3
"""
sharqd benchmark driver (`make bench`).  Stdlib only; uses the redis-server,
redis-benchmark and wrk binaries.

It starts its own redis-server (free port, no persistence, temp dir) and
sharqd (`twistd -n --pidfile= sharq -c CONF`, workers 1 then 2), drives
sharqd with wrk (bench/*.lua) and prints markdown (also written to
bench/RESULTS.md):

  * enqueue, dequeue and dequeue+finish at 32 and 64 connections (wrk -t2):
    req/s, p50, p99, 404s and errors, sharqd and Redis CPU us per request;
  * the raw rate of the same Lua scripts (FCALL of the function library,
    exactly as sharqd calls it) by redis-benchmark at the same concurrency;
  * the Redis time of the dequeue script with 1, 1,000 and 100,000 ready
    queues (SLOWLOG with slowlog-log-slower-than 0);
  * the performance floors, each met or MISSED.

Its parts, in the order they run: machine.py (tools, twistd, what the
results say about the machine), servers.py (redis-server and sharqd with
the tests' harness, tests/processes.py, and their CPU time), luascripts.py
and rawredis.py (the scripts straight on Redis), wrk.py (the wrk runs),
floors.py and report.py (the markdown), pyspy.py (--profile).  The medians
also go to bench/RESULTS.json for bench/floors.py (issue 10's floors).

Numbers only: nothing here is a pass/fail test, and the exit status is 0
even when floors are missed (1 only when the bench itself could not run).
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import figures  # noqa: E402
from common import (HERE, ROOT, WORKLOADS, BenchError, Deadline,  # noqa: E402
                    in_repo, log)
from floors import floors  # noqa: E402
from luascripts import Scripts  # noqa: E402
from machine import ensure_tools, find_twistd, machine_meta  # noqa: E402
from pyspy import profile  # noqa: E402
from rawredis import dequeue_scaling, raw_benchmarks  # noqa: E402
from report import load_summary, median_of, report, summarize  # noqa: E402
from servers import RedisServer  # noqa: E402
from wrk import sharqd_runs  # noqa: E402


def save_figures(runs, quick):
    """The medians of workers=1 at 32 connections, for bench/floors.py."""
    groups = summarize(runs)
    cpu = {wl: median_of(groups[1, wl, 32], "sharqd_cpu_us")
           for wl in WORKLOADS if (1, wl, 32) in groups}
    rates = {wl: median_of(groups[1, wl, 32], "jobs_ps")
             for wl in WORKLOADS if (1, wl, 32) in groups}
    figures.save("wrk", {"cpu_us": cpu, "jobs_ps": rates}, quick=quick)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twistd", help="twistd of a venv with sharqd's deps")
    ap.add_argument("--installed", action="store_true",
                    help="bench the installed sharqd, not this source tree")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--runs", type=int, default=3, help="runs at 32 connections")
    ap.add_argument("--runs64", type=int, default=3, help="runs at 64 connections")
    ap.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 2], help="comma-separated, default 1,2")
    ap.add_argument("--raw-n", type=int, default=60000,
                    help="redis-benchmark calls per script (finish: a quarter)")
    ap.add_argument("--scaling", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 1000, 100000])
    ap.add_argument("--scaling-k", type=int, default=2000, help="dequeues timed per size")
    ap.add_argument("--job-expire-ms", type=int, default=1000)
    ap.add_argument("--quiet-wait", type=float, default=2,
                    help="max seconds to wait before each run for other load to drop")
    ap.add_argument("--max-minutes", type=float, default=25,
                    help="time budget; later parts are skipped past it")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 s runs, 1 run each, small raw and scaling sizes")
    ap.add_argument("--profile", choices=WORKLOADS,
                    help="instead of the bench: profile sharqd (workers 1) under py-spy "
                         "for this workload at 32 connections, --duration s")
    ap.add_argument("--profile-format", choices=["flamegraph", "raw", "speedscope"],
                    default="flamegraph",
                    help="flamegraph SVG, or raw collapsed stacks (prints top frames)")
    ap.add_argument("--py-spy", help="py-spy binary (pip install py-spy)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.runs, args.runs64, args.raw_n = 2, 1, 1, 5000
        args.scaling, args.scaling_k = [1, 1000], 200
    if args.runs < 1 or args.duration < 1:
        ap.error("need --runs >= 1 and --duration >= 1")

    started = time.monotonic()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    deadline = Deadline(args.max_minutes)
    tools = ensure_tools()
    twistd = find_twistd(args.twistd)
    env = dict(os.environ)
    if not args.installed:
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-bench-"))
    rs = None
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        rs = RedisServer(tools["redis-server"], tmp)
        log(f"redis-server {rs.version()} on port {rs.port}, temp dir {tmp}")
        scripts = Scripts(rs.client)
        if args.profile:
            print(profile(rs, scripts, twistd, env, tmp, tools["wrk"], args))
            return 0
        meta = machine_meta(rs, twistd, env, args, tools["wrk"])
        notes = []
        raw, scaling = [], []
        try:
            raw = raw_benchmarks(rs, scripts, tools["redis-benchmark"], [32, 64],
                                 args.raw_n, deadline)
        except BenchError as e:
            notes.append(f"raw benchmarks stopped: {e}")
        try:
            deadline.check("dequeue scaling")
            scaling = dequeue_scaling(rs, scripts, args.scaling, args.scaling_k)
        except BenchError as e:
            notes.append(f"dequeue scaling stopped: {e}")
        runs, run_notes = sharqd_runs(rs, scripts, twistd, env, tmp, tools["wrk"], args,
                                      deadline)
        notes.extend(run_notes)
        total = time.monotonic() - started
        if runs:
            meta.append(("Machine load", load_summary(runs, load_start)))
        meta.append(("Bench run time", f"{total / 60:.1f} min "
                     f"(`{in_repo(' '.join([Path(sys.argv[0]).name] + sys.argv[1:]))}`)"))
        text = report(meta, raw, scaling, runs, notes, floors(summarize(runs), scaling))
        print(text)
        Path(args.out).write_text(text + "\n")
        if runs:
            save_figures(runs, args.quick)
        log(f"wrote {args.out}; total {total:.0f} s")
        return 0
    except BenchError as e:
        log(f"bench failed: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if rs is not None:
            rs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
