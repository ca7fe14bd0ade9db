#!/usr/bin/env python3
"""
CPU per request as instructions, not seconds: sharqd runs under
`valgrind --tool=callgrind`, a sequential keep-alive client sends N
enqueues, N dequeues and N finishes, and the instructions sharqd executed
for each group are divided by N.  The count is the same whatever else the
machine is doing, so before/after comparisons hold on a busy machine
(seconds do not).  Under valgrind sharqd is ~50x slower: the figures are
instructions, never rates.

    .venv/bin/python bench/instructions.py [--n 300] [--twistd .venv/bin/twistd]

Prints one line per operation and a JSON line for scripts.  Stdlib only,
plus valgrind and redis-server.
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hotpath import Instructions  # noqa: E402
from servers import RedisServer, free_port, stop_group  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OPS = ("enqueue", "dequeue", "finish")


def start_sharqd(twistd, tmp, redis_port, redis_lines=None):
    port = free_port()
    conf = tmp / "sharqd.ini"
    # a long requeue period keeps the timer's instructions out of the counts
    conf.write_text(
        "[sharq]\njob_expire_interval : 600000\njob_requeue_interval : 600000\n"
        f"[sharq-server]\nhost : 127.0.0.1\nport : {port}\nworkers : 1\n"
        "[redis]\n" + (redis_lines or f"host : 127.0.0.1\nport : {redis_port}\ndb : 0\n")
        + "key_prefix : sharq_server\n")
    out = tmp / "callgrind.out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp / "sharqd.log", "wb")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         twistd, "-n", "--pidfile=", "sharq", "-c", str(conf)],
        cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sharqd under valgrind exited; see {tmp}/sharqd.log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if request(conn, "GET", "/deepstatus/")[0] == 200:
                return proc, conn
        except OSError:
            time.sleep(1)
    raise SystemExit("sharqd did not answer within 300 s under valgrind")


def request(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, data


def run_ops(conn, n, tag):
    """n enqueues, n dequeues, n finishes; yields (op, callable) groups."""
    jobs = []

    def enqueue():
        for i in range(n):
            body = json.dumps({"job_id": f"{tag}-{i}", "interval": 0,
                               "payload": {"n": i, "text": "x" * 60}})
            status, _ = request(conn, "POST", f"/enqueue/bench/q{i % 100}/", body)
            assert status == 201, status

    def dequeue():
        for _ in range(n):
            status, data = request(conn, "GET", "/dequeue/bench/")
            assert status == 200, (status, data)
            job = json.loads(data)
            jobs.append((job["queue_id"], job["job_id"]))

    def finish():
        for queue_id, job_id in jobs:
            status, _ = request(conn, "POST", f"/finish/bench/{queue_id}/{job_id}/")
            assert status == 200, status

    return (("enqueue", enqueue), ("dequeue", dequeue), ("finish", finish))


def measure(meter, action):
    """Instructions per run of action (meter: hotpath.Instructions, the
    one reader of callgrind's counts for the benches)."""
    meter.read()  # a dump: the count starts afresh
    action()
    return meter.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="requests per operation")
    ap.add_argument("--twistd", default=str(ROOT / ".venv" / "bin" / "twistd"))
    ap.add_argument("--cluster", action="store_true",
                    help="on a Redis Cluster of 3 masters (clustered = true)")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-instr-"))
    redis = RedisServer(shutil.which("redis-server"), tmp)
    cluster, lines = None, None
    if args.cluster:
        sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
        from support import RedisCluster
        cluster = RedisCluster(masters=3, replicas=0).start()
        lines = cluster.config_lines()
    proc = None
    ok = False
    try:
        proc, conn = start_sharqd(os.path.abspath(args.twistd), tmp, redis.port, lines)
        meter = Instructions(proc.pid, tmp)
        for op, action in run_ops(conn, 50, "warm"):  # warm caches and scripts
            action()
        results = {}
        for op, action in run_ops(conn, args.n, "run"):
            results[op] = measure(meter, action) / args.n
            print(f"{op:8s} {results[op]:>12,.0f} instructions per request")
        print("INSTRJSON " + json.dumps({k: round(v) for k, v in results.items()}))
        ok = True
    finally:
        if proc is not None:
            stop_group(proc, "sharqd", grace=30)
        redis.stop()
        if cluster is not None:
            cluster.cleanup()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (sharqd.log) for a look", file=sys.stderr)


if __name__ == "__main__":
    main()
