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

Stdlib only; numbers only, never a pass/fail.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process on port {port} exited")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def start(tmp, twistd):
    redis_port, http_port = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(redis_port, redis)
    conf = os.path.join(tmp, "sharq.conf")
    with open(conf, "w") as f:
        f.write(f"[sharq]\njob_expire_interval : 600000\n"
                f"[sharq-server]\nhost : 127.0.0.1\nport : {http_port}\n"
                f"[redis]\nhost : 127.0.0.1\nport : {redis_port}\n")
    sharqd = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "sharq", "-c", conf], cwd=tmp,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=open(os.path.join(tmp, "sharqd.log"), "wb"), stderr=subprocess.STDOUT)
    wait_port(http_port, sharqd)
    return redis, sharqd, http_port


def run(conn, pid, requests):
    """CPU microseconds of pid per request for the (method, path, body)s."""
    before = cpu_seconds(pid)
    for method, path, body in requests:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        response.read()
        if response.status >= 300:
            raise SystemExit(f"{method} {path}: {response.status}")
    return (cpu_seconds(pid) - before) * 1e6 / len(requests)


def one_round(conn, pid, n, tag, escaped):
    q = "q%31" if escaped else "q1"
    enqueue = [("POST", f"/enqueue/hp/{q}/", json.dumps(
        {"job_id": f"{tag}-{i}", "interval": 0, "payload": {"i": i}}).encode())
        for i in range(n)]
    dequeue = [("GET", "/dequeue/h%70/" if escaped else "/dequeue/hp/", None)] * n
    finish = [("POST", f"/finish/hp/{q}/{tag}-{i}/", None) for i in range(n)]
    return {"enqueue": run(conn, pid, enqueue), "dequeue": run(conn, pid, dequeue),
            "finish": run(conn, pid, finish)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--twistd", default=shutil.which("twistd") or "twistd")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sharqd-hotpath-")
    redis, sharqd, port = start(tmp, args.twistd)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        one_round(conn, sharqd.pid, 500, "warm", False)  # imports, caches
        results = {False: [], True: []}
        for r in range(args.runs):
            for escaped in (False, True):
                results[escaped].append(one_round(
                    conn, sharqd.pid, args.requests, f"r{r}{int(escaped)}", escaped))
        print(f"CPU us per request of sharqd, median of {args.runs} runs of "
              f"{args.requests} sequential requests:")
        print("| route | hot dispatch | Klein routing | saved |")
        print("|---|---|---|---|")
        for route in ("enqueue", "dequeue", "finish"):
            hot = statistics.median(x[route] for x in results[False])
            klein = statistics.median(x[route] for x in results[True])
            print(f"| {route} | {hot:.0f} | {klein:.0f} | {1 - hot / klein:.0%} |")
    finally:
        sharqd.send_signal(signal.SIGTERM)
        sharqd.wait(15)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
