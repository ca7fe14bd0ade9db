#!/usr/bin/env python3
"""
CPU of sharqd per request on the hot routes, from one sequential client.

Starts its own redis-server and sharqd (`twistd -n sharq`, workers 1), then
for enqueue, dequeue and finish sends N requests one after the other on one
keep-alive connection and reads sharqd's utime+stime (/proc/<pid>/stat)
before and after: CPU microseconds per request of the server process alone,
which a busy machine disturbs far less than a rate.  Each route runs twice:
as clients send it (the hot dispatch) and with one path character
percent-escaped (`/enqueue/hp/q%31/`), which the hot dispatch leaves to
Klein's routing: the difference is what the hot dispatch saves.

    python3 bench/hotpath.py [--requests 5000] [--runs 3] [--twistd PATH]

With --callgrind, sharqd runs under valgrind's callgrind and the figures are
instructions per request (counters zeroed before and dumped after each
batch with callgrind_control): slow (use --requests 500 --runs 1), but the
same on a busy machine as on an idle one.

Stdlib only; numbers only, never a pass/fail.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import processes  # noqa: E402  (the process harness shared with the tests)
from processes import cpu_seconds  # noqa: E402


def start(tmp, twistd, callgrind=False):
    redis = processes.RedisServer().start()
    http_port = processes.free_port()
    conf = os.path.join(tmp, "sharq.conf")
    with open(conf, "w") as f:
        f.write(processes.sharq_conf(http_port, redis.port, "sharq_server",
                                     sharq="job_expire_interval : 600000"))
    command = [twistd]
    if callgrind:  # the venv's python, so valgrind does not see a script
        python = os.path.join(os.path.dirname(twistd), "python")
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" +
                   os.path.join(tmp, "callgrind.out"), python, "-c",
                   "from twisted.scripts.twistd import run; run()"]
    sharqd = processes.SharqdProcess(command, conf, os.path.join(tmp, "sharqd.log"),
                                     tmp).start()
    sharqd.wait_listening(http_port, timeout=300 if callgrind else 20)
    return redis, sharqd, http_port


class CPU:
    """utime+stime of a process, in microseconds."""

    def __init__(self, pid):
        self.pid = pid

    def read(self):
        return cpu_seconds(self.pid) * 1e6


class Instructions:
    """Instructions run by a process under callgrind since the last read
    (each callgrind dump starts the counts afresh)."""

    def __init__(self, pid, folder):
        self.pid = pid
        self.folder = Path(folder)

    def read(self):
        subprocess.run(["callgrind_control", "-d", str(self.pid)],
                       capture_output=True, check=True, timeout=120)
        dumps = sorted(self.folder.glob("callgrind.out.*"),
                       key=lambda p: int(p.name.rsplit(".", 1)[1]))
        for line in dumps[-1].read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise SystemExit(f"no totals in {dumps[-1]}")


def run(conn, meter, requests):
    """The meter's count per request for the (method, path, body)s."""
    before = meter.read()
    for method, path, body in requests:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        response.read()
        if response.status >= 300:
            raise SystemExit(f"{method} {path}: {response.status}")
    after = meter.read()
    if isinstance(meter, Instructions):  # counted since `before`
        return after / len(requests)
    return (after - before) / len(requests)


def one_round(conn, meter, n, tag, escaped):
    q = "q%31" if escaped else "q1"
    enqueue = [("POST", f"/enqueue/hp/{q}/", json.dumps(
        {"job_id": f"{tag}-{i}", "interval": 0, "payload": {"i": i}}).encode())
        for i in range(n)]
    dequeue = [("GET", "/dequeue/h%70/" if escaped else "/dequeue/hp/", None)] * n
    finish = [("POST", f"/finish/hp/{q}/{tag}-{i}/", None) for i in range(n)]
    return {"enqueue": run(conn, meter, enqueue), "dequeue": run(conn, meter, dequeue),
            "finish": run(conn, meter, finish)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--twistd", default=shutil.which("twistd") or "twistd")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions under valgrind instead of CPU time")
    args = parser.parse_args()
    if os.sep in args.twistd:  # sharqd runs in a temp dir
        args.twistd = os.path.abspath(args.twistd)
    tmp = tempfile.mkdtemp(prefix="sharqd-hotpath-")
    redis, sharqd, port = start(tmp, args.twistd, args.callgrind)
    meter = Instructions(sharqd.pid, tmp) if args.callgrind else CPU(sharqd.pid)
    unit = "instructions" if args.callgrind else "CPU us"
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        one_round(conn, meter, 200, "warm", False)  # imports, caches
        results = {False: [], True: []}
        for r in range(args.runs):
            for escaped in (False, True):
                results[escaped].append(one_round(
                    conn, meter, args.requests, f"r{r}{int(escaped)}", escaped))
        print(f"{unit} per request of sharqd, median of {args.runs} runs of "
              f"{args.requests} sequential requests:")
        print("| route | hot dispatch | Klein routing | saved |")
        print("|---|---|---|---|")
        for route in ("enqueue", "dequeue", "finish"):
            hot = statistics.median(x[route] for x in results[False])
            klein = statistics.median(x[route] for x in results[True])
            print(f"| {route} | {hot:.0f} | {klein:.0f} | {1 - hot / klein:.0%} |")
    finally:
        sharqd.stop()
        redis.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
