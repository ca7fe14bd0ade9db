#!/usr/bin/env python3
"""
sharqd and the original SharQ Server side by side under wrk (32
connections, as the wrk bench drives sharqd alone): CPU per request of
each server's process tree, one after the other on one redis-server.

Each side: enqueue for ENQUEUE_S seconds over 1,000 queues (interval 0),
then dequeue+finish, then dequeue, of the jobs it enqueued (never run dry:
the enqueue phase stores more than the two others take).  sharqd runs with
workers = 1, the original with one gunicorn gevent worker.  With --runs N
the two sides take turns N times and the table gives each run and the
medians.  Stdlib only; prints a markdown table (bench/RESULTS.md keeps a
copy by hand); with --save, the medians go into bench/RESULTS.json
("sidebyside_wrk"), where bench/floors.py judges the "1/5 of the
original's" floors of issue 10 by them (`make bench` does so).

    .venv/bin/python bench/sidebyside_wrk.py [--seconds 4] [--runs 3] [--save] [--quick]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]
import figures  # noqa: E402
import processes  # noqa: E402
from common import NQUEUES, QTYPE  # noqa: E402
from resp import Redis  # noqa: E402
from sidebyside import SIDES, Original, Sharqd, original_venv, ratio  # noqa: E402
from wrk import run_wrk  # noqa: E402

WORKLOADS = ("enqueue", "dequeue_finish", "dequeue")


def under_wrk(server, wrk, seconds, conns):
    """{workload: {requests, ok, cpu_us}} of one server."""
    rows = {}
    url = f"http://127.0.0.1:{server.port}"
    for workload in WORKLOADS:
        # enqueue runs twice as long: it stores what the others take
        duration = 2 * seconds if workload == "enqueue" else seconds
        before = server.cpu_s()
        w = run_wrk(wrk, url, workload, conns, duration, [QTYPE, str(NQUEUES), "w"])
        cpu = server.cpu_s() - before
        requests = max(w["requests"], 1)
        rows[workload] = {"requests": w["requests"], "ok": w["ok"], "n404": w["n404"],
                          "rps": w["requests"] / (w["duration_us"] / 1e6),
                          "cpu_us": cpu * 1e6 / requests}
    return rows


def medians(runs):
    """{side: {workload: {cpu_us, rps}}}: the median of each over the runs."""
    return {side: {w: {key: statistics.median(run[side][w][key] for run in runs)
                       for key in ("cpu_us", "rps")} for w in WORKLOADS} for side in SIDES}


def table(runs, conns):
    """Each run's figures, " / " between runs, and the medians' ratio."""
    def each(side, w, key, form):
        return " / ".join(format(run[side][w][key], form) for run in runs)

    mid = medians(runs)
    out = [f"| workload (wrk, {conns} connections) | sharqd req/s | original req/s | "
           "sharqd CPU us/req | original CPU us/req | ratio (medians) |",
           "|---|---:|---:|---:|---:|---:|"]
    for w in WORKLOADS:
        out.append(f"| {w} | {each('sharqd', w, 'rps', ',.0f')} | "
                   f"{each('original', w, 'rps', ',.0f')} | "
                   f"{each('sharqd', w, 'cpu_us', '.0f')} | "
                   f"{each('original', w, 'cpu_us', '.0f')} | "
                   f"{ratio(mid['sharqd'][w]['cpu_us'], mid['original'][w]['cpu_us'])} |")
    out.append("")
    out.append("Answers: " + "; ".join(
        f"{side} {w} {sum(run[side][w]['ok'] for run in runs):,} ok, "
        f"{sum(run[side][w]['n404'] for run in runs):,} 404"
        for side in SIDES for w in WORKLOADS))
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=str(HERE.parent / ".venv" / "bin" / "twistd"))
    parser.add_argument("--original", default=str(HERE.parent.parent / "shared" / "original"))
    parser.add_argument("--original-venv", default=str(HERE.parent / ".venv-original"))
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1,
                        help="the two sides take turns this many times (medians)")
    parser.add_argument("--save", action="store_true",
                        help="the medians into bench/RESULTS.json (sidebyside_wrk)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s, one run (saved figures judge nothing)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 2, 1
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed: ./scripts/setup.sh wrk")
    source = Path(args.original).resolve()
    venv = original_venv(source, Path(args.original_venv).resolve())
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="sharqd-sbs-wrk-") as tmpdir:
        tmp = Path(tmpdir)
        redis_server = processes.RedisServer(options=["--maxclients", "10000"]).start()
        redis = Redis(port=redis_server.port)
        try:
            for _ in range(args.runs):
                rows = {}
                for side in SIDES:
                    redis.call("FLUSHALL")
                    server = (Sharqd(tmp, redis_server.port, args.twistd) if side == "sharqd"
                              else Original(tmp, redis_server.port, venv, source))
                    server.start()
                    try:
                        rows[side] = under_wrk(server, wrk, int(args.seconds), args.conns)
                    finally:
                        server.stop()
                runs.append(rows)
        finally:
            redis.close()
            redis_server.cleanup()
    print(table(runs, args.conns))
    if args.save:
        figures.save("sidebyside_wrk", {
            "conns": args.conns, "seconds": args.seconds, "runs": args.runs,
            "load": [round(x, 2) for x in load], **medians(runs)}, args.quick)


if __name__ == "__main__":
    main()
