#!/usr/bin/env python3
"""
sharqd and the original SharQ Server side by side under wrk (32
connections, as the wrk bench drives sharqd alone): CPU per request of
each server's process tree, one after the other on one redis-server.

Each side: enqueue for ENQUEUE_S seconds over 1,000 queues (interval 0),
then dequeue+finish, then dequeue, of the jobs it enqueued (never run dry:
the enqueue phase stores more than the two others take).  sharqd runs with
workers = 1, the original with one gunicorn gevent worker.  Stdlib only;
prints a markdown table (bench/RESULTS.md keeps a copy by hand).

    .venv/bin/python bench/sidebyside_wrk.py [--seconds 4]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]
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


def table(rows, conns):
    out = [f"| workload (wrk, {conns} connections) | sharqd req/s | original req/s | "
           "sharqd CPU us/req | original CPU us/req | ratio |",
           "|---|---:|---:|---:|---:|---:|"]
    for workload in WORKLOADS:
        s, o = rows["sharqd"][workload], rows["original"][workload]
        out.append(f"| {workload} | {s['rps']:,.0f} | {o['rps']:,.0f} | {s['cpu_us']:.0f} | "
                   f"{o['cpu_us']:.0f} | {ratio(s['cpu_us'], o['cpu_us'])} |")
    out.append("")
    out.append("Answers: " + "; ".join(
        f"{side} {w} {rows[side][w]['ok']:,} ok, {rows[side][w]['n404']:,} 404"
        for side in SIDES for w in WORKLOADS))
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=str(HERE.parent / ".venv" / "bin" / "twistd"))
    parser.add_argument("--original", default=str(HERE.parent.parent / "shared" / "original"))
    parser.add_argument("--original-venv", default=str(HERE.parent / ".venv-original"))
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--conns", type=int, default=32)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed: ./scripts/setup.sh wrk")
    source = Path(args.original).resolve()
    venv = original_venv(source, Path(args.original_venv).resolve())
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="sharqd-sbs-wrk-") as tmpdir:
        tmp = Path(tmpdir)
        redis_server = processes.RedisServer(options=["--maxclients", "10000"]).start()
        redis = Redis(port=redis_server.port)
        try:
            for side in SIDES:
                redis.call("FLUSHALL")
                server = (Sharqd(tmp, redis_server.port, args.twistd) if side == "sharqd"
                          else Original(tmp, redis_server.port, venv, source))
                server.start()
                try:
                    rows[side] = under_wrk(server, wrk, int(args.seconds), args.conns)
                finally:
                    server.stop()
        finally:
            redis.close()
            redis_server.cleanup()
    print(table(rows, args.conns))


if __name__ == "__main__":
    main()
