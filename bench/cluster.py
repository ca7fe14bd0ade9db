"""
make bench-cluster: sharqd on one Redis, on a Redis Cluster of 1 shard and
of 3 shards (masters only), with the wrk workloads of make bench (enqueue,
dequeue, dequeue + finish) spread over 60 queue types; then the enqueue
latency with [redis] wait_replicas 0 and 1 on 3 masters + 3 replicas.
Writes bench/RESULTS-cluster.md.

    python3 bench/cluster.py --twistd .venv/bin/twistd [--duration 10]

Per run: requests/s, p99, sharqd's CPU per request and each Redis node's
CPU per request (from /proc), so that the share of each shard shows even
where the machine's cores cap the total.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from support import RedisCluster, RedisServer, free_port, resp_command  # noqa: E402

TYPES = 60
QUEUES = 100  # per type
PREFILL = 1500  # jobs per type before a dequeue run
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class Server:
    """twistd -n sharq with its own config, on the tree under test."""

    def __init__(self, twistd, tmp, redis_lines):
        self.port = free_port()
        self.conf = os.path.join(tmp, f"sharq-{self.port}.conf")
        with open(self.conf, "w") as f:
            f.write(f"[sharq]\njob_expire_interval : 1000\njob_requeue_interval : 1000\n"
                    f"[sharq-server]\nhost : 127.0.0.1\nport : {self.port}\n"
                    f"[redis]\nkey_prefix : bench\ntimeout : 2\n{redis_lines}")
        self.log = open(os.path.join(tmp, f"sharqd-{self.port}.log"), "ab")
        self.proc = subprocess.Popen([twistd, "-n", "--pidfile=", "sharq", "-c", self.conf],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=ROOT), cwd=tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/deepstatus/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sharqd did not start")

    def post(self, path, body):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         method="POST")
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def prefill(server, tag):
    for t in range(TYPES):
        jobs = [{"queue_id": f"t{t}-q{i % QUEUES}", "job_id": f"{tag}{i}", "interval": 0,
                 "payload": {"n": i}} for i in range(PREFILL)]
        for i in range(0, PREFILL, 1000):
            server.post(f"/enqueue/t{t}/", {"jobs": jobs[i:i + 1000]})


def wrk(url, workload, duration, tag):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{duration}s", "--timeout", "2s",
                          "-s", os.path.join(HERE, "multitype.lua"), url, "--",
                          workload, str(TYPES), str(QUEUES), tag],
                         capture_output=True, text=True, timeout=duration + 60)
    line = next(l for l in out.stdout.splitlines() if l.startswith("WRKJSON "))
    result = json.loads(line[len("WRKJSON "):])
    result["stderr"] = out.stderr.strip()[:300]
    return result


def sequential_latency(server, n=2000):
    """p50 and p99 ms of n enqueues one after the other on one keep-alive
    connection: the latency a lone producer sees."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    took = []
    for i in range(n):
        body = json.dumps({"job_id": f"seq{i}", "interval": 0, "payload": {"n": i}})
        started = time.perf_counter()
        conn.request("POST", f"/enqueue/t{i % TYPES}/t{i % TYPES}-q{i % QUEUES}/", body)
        response = conn.getresponse()
        response.read()
        took.append(time.perf_counter() - started)
        assert response.status == 201, response.status
    conn.close()
    took.sort()
    return took[n // 2] * 1000, took[int(n * 0.99)] * 1000


def run(mode, nodes, redis_lines, twistd, tmp, duration, workloads, flush,
        sequential=False):
    rows = []
    for workload in workloads:
        flush()
        server = Server(twistd, tmp, redis_lines)
        try:
            if workload != "enqueue":
                prefill(server, f"p{workload[:3]}")
            seq = sequential_latency(server) if sequential else None
            before = (cpu_s(server.proc.pid), [cpu_s(n.process.pid) for n in nodes])
            tag = "".join(c for c in mode if c.isalnum())[-6:] + workload[:3]
            w = wrk(server.url, workload, duration, tag)
            after = (cpu_s(server.proc.pid), [cpu_s(n.process.pid) for n in nodes])
        finally:
            server.stop()
        requests = max(w["requests"], 1)
        seconds = w["duration_us"] / 1e6
        redis_us = [(a - b) * 1e6 / requests for a, b in zip(after[1], before[1])]
        rows.append({
            "mode": mode, "workload": workload, "rps": requests / seconds,
            "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
            "errors": w["other_status"] + w["connect"] + w["read"] + w["write"] + w["timeout"],
            "sharqd_us": (after[0] - before[0]) * 1e6 / requests,
            "redis_us": redis_us,
            "finished_ps": w["finished"] / seconds, "wrk_stderr": w["stderr"],
            "sequential": seq,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def flusher(nodes):
    def flush():
        for node in nodes:
            try:
                resp_command(node.port, "FLUSHALL")
            except RuntimeError:
                pass  # a replica refuses; its master's flush reaches it
    return flush


def busy_before():
    """The machine's load average when the run starts (shared machine)."""
    return os.getloadavg()[0]


def report(rows, path, duration, load):
    lines = [
        "# Benchmark: Redis Cluster (make bench-cluster)",
        "",
        f"Run of `python3 bench/cluster.py --duration {duration}` on "
        f"{platform.node() and 'this project'}'s machine kind: {os.cpu_count()} cores "
        f"**shared with other developers' test runs** (load average {load:.1f} at the "
        f"start), Redis {resp_version()}, wrk -t2 -c32, {duration} s per run, one run "
        f"each (no medians: the figures move by 10-20 % from run to run on this busy "
        f"machine; compare the CPU per request, not the totals).",
        "",
        f"{TYPES} queue types, {QUEUES} queues each, interval 0; each wrk request takes "
        f"the next type (`bench/multitype.lua`). Dequeue runs start with {PREFILL} jobs "
        f"per type. sharqd: one process (`workers 1`). CPU per request from /proc of "
        f"each process over the run.",
        "",
        "| setup | workload | req/s | p50 ms | p99 ms | errors | sharqd CPU µs/req | "
        "Redis CPU µs/req per node | Redis total µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        per_node = " / ".join(f"{u:.0f}" for u in r["redis_us"])
        lines.append(f"| {r['mode']} | {r['workload']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['errors']} | {r['sharqd_us']:.0f} | {per_node} | "
                     f"{sum(r['redis_us']):.0f} |")
    seq = [r for r in rows if r.get("sequential")]
    if seq:
        lines += ["", "Enqueue latency of a lone producer (2,000 enqueues one after the "
                  "other on one keep-alive connection, before the wrk run):", "",
                  "| setup | p50 ms | p99 ms |", "|---|---:|---:|"]
        lines += [f"| {r['mode']} | {r['sequential'][0]:.2f} | {r['sequential'][1]:.2f} |"
                  for r in seq]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def resp_version():
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    return out.stdout.split("v=")[1].split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twistd", default=os.path.join(ROOT, ".venv", "bin", "twistd"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS-cluster.md"))
    ap.add_argument("--setups", default="single,1,3,wait",
                    help="which of: single (one Redis), 1 and 3 (shards), wait")
    args = ap.parse_args()
    args.twistd = os.path.abspath(args.twistd)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: ./scripts/setup.sh wrk")
    tmp = tempfile.mkdtemp(prefix="sharqd-bench-cluster-")
    load = busy_before()
    workloads = ["enqueue", "dequeue", "dequeue_finish"]
    rows = []
    setups = args.setups.split(",")
    if "single" in setups:
        single = RedisServer().start()
        try:
            rows += run("one Redis", [single], f"port : {single.port}\n", args.twistd, tmp,
                        args.duration, workloads, flusher([single]))
        finally:
            single.cleanup()
    for masters in (1, 3):
        if str(masters) not in setups:
            continue
        cluster = RedisCluster(masters=masters, replicas=0).start()
        try:
            masters_now = cluster.masters()
            rows += run(f"cluster, {masters} shard{'s' if masters > 1 else ''}", masters_now,
                        cluster.config_lines(), args.twistd, tmp, args.duration,
                        workloads, flusher(masters_now))
        finally:
            cluster.cleanup()
    cluster = RedisCluster(masters=3, replicas=1).start() if "wait" in setups else None
    try:
        masters_now = cluster.masters() if cluster else []
        for replicas in (0, 1) if cluster else ():
            rows += run(f"3 shards + replicas, wait_replicas {replicas}", masters_now,
                        cluster.config_lines() + f"wait_replicas : {replicas}\n"
                        "wait_timeout : 100\n", args.twistd, tmp, args.duration,
                        ["enqueue"], flusher(cluster.nodes), sequential=True)
    finally:
        if cluster:
            cluster.cleanup()
    report(rows, args.out, args.duration, load)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
