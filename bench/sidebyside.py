#!/usr/bin/env python3
"""
sharqd and the original SharQ Server side by side (part of `make bench`):
one redis-server, each server on it in turn under its own key prefix, the
same HTTP workloads on both.  Figures, sharqd / original and their ratio:

  1. server CPU per request for enqueue, dequeue and finish (sharqd
     workers = 1; the original on gunicorn -w 1 -k gevent, master and
     worker counted), from /proc;
  2. Redis time per job lifecycle (enqueue + dequeue + finish) from INFO
     commandstats (usec of every command the server sent, its own requeue
     loop included) over that workload;
  3. Redis memory per queued and per active job with 1,000 and 100,000
     queue_ids (used_memory over 100,000 jobs of ~120-byte payloads, filled
     with each side's own Lua scripts, pipelined);
  4. redis-benchmark of each side's enqueue script;
and for sharqd alone, figures for the next round: /metrics/<type>/ over
200,000 queues (largest Redis call, SLOWLOG), the requeue of 1,000,000
active jobs expiring at once (time, and a concurrent enqueue's latency),
and the requeue pass with 2,000 and 20,000 idle types (sharqd and Redis
CPU).

CPU and Redis usec are counters, not rates: they hold on a busy machine
far better than req/s.  The original (../shared/original, README there)
gets its virtualenv built in .venv-original/ when missing.

    python3 bench/sidebyside.py --twistd .venv/bin/twistd [--quick]

Prints markdown and puts it into bench/RESULTS.md between the
`<!-- sidebyside -->` markers.  Stdlib only.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
import processes  # noqa: E402  (the process harness shared with the tests)
from resp import Redis, RespError  # noqa: E402
from common import QTYPE  # noqa: E402
from luascripts import Scripts  # noqa: E402

RESULTS = HERE / "RESULTS.md"
MARK = "<!-- sidebyside -->"
PAYLOAD = {"to": "+15550000000", "from": "+15550000001",
           "text": "Your verification code is 123456. It expires in ten minutes.", "n": 1}
SIDES = ("sharqd", "original")
IGNORED_COMMANDS = {"info", "config", "slowlog", "flushall", "script", "memory"}


def log(msg):
    print(f"[sidebyside {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the two servers

class Server:
    """One of the two HTTP servers, in its own process group."""

    name = None

    def __init__(self, tmp, redis_port):
        self.tmp, self.redis_port = tmp, redis_port
        self.port = processes.free_port()
        self.process = None

    def cpu_s(self):
        return processes.tree_cpu_seconds(self.process.pid)[0]

    def wait_ready(self):
        processes.wait_for(lambda: self._answers(), timeout=60, step=0.2)

    def _answers(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited; log in {self.tmp}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self):
        processes.stop_group(self.process)


class Sharqd(Server):
    name = "sharqd"

    def __init__(self, tmp, redis_port, twistd, prefix="sharqd_bench", redis=""):
        super().__init__(tmp, redis_port)
        conf = tmp / f"sharqd-{self.port}.conf"
        conf.write_text(processes.sharq_conf(
            self.port, redis_port, prefix,
            sharq="job_expire_interval : 600000\njob_requeue_interval : 1000",
            server="workers : 1", redis=redis))
        self.launcher = processes.SharqdProcess([twistd], str(conf),
                                                str(tmp / f"sharqd-{self.port}.log"), str(tmp))

    def start(self):
        self.process = self.launcher.start().process
        self.wait_ready()
        return self


class Original(Server):
    name = "original"

    def __init__(self, tmp, redis_port, venv, source, prefix="original_bench"):
        super().__init__(tmp, redis_port)
        self.venv, self.source = venv, source
        self.conf = tmp / f"original-{self.port}.conf"
        self.conf.write_text(original_conf(redis_port, prefix))

    def start(self):
        self.log = open(self.tmp / f"original-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [str(self.venv / "bin" / "gunicorn"), "-k", "gevent", "-w", "1",
             "-b", f"127.0.0.1:{self.port}", "--chdir", str(self.source), "app:app"],
            env=dict(os.environ, SHARQ_CONFIG=str(self.conf)), cwd=self.tmp,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_ready()
        return self


def original_conf(redis_port, prefix):
    """The original's config format: no inline comments, every key present."""
    return ("[sharq]\njob_expire_interval : 600000\njob_requeue_interval : 1000\n"
            "default_job_requeue_limit : -1\nenable_requeue_script : true\n\n"
            f"[redis]\ndb : 0\nkey_prefix : {prefix}\nconn_type : tcp_sock\n"
            f"unix_socket_path : /tmp/unused.sock\nport : {redis_port}\n"
            "host : 127.0.0.1\nclustered : false\npassword : \n")


def original_venv(source, venv):
    """The original's virtualenv, built by its setup.sh when missing."""
    if not (venv / "bin" / "gunicorn").exists():
        log(f"building the original's virtualenv in {venv.relative_to(ROOT)}")
        subprocess.run(["bash", str(source / "setup.sh"), str(venv)], check=True,
                       timeout=900)
    return venv


# ---------------------------------------------------------------- the HTTP workload

def drive(port, requests, threads=4):
    """Send requests [(method, path, body)] over `threads` keep-alive
    connections; returns ([(status, body)] in order, seconds)."""
    answers = [None] * len(requests)

    def worker(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(k, len(requests), threads):
            method, path, body = requests[i]
            conn.request(method, path, body=body)
            response = conn.getresponse()
            answers[i] = (response.status, response.read())
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return answers, time.monotonic() - started


def commandstats(redis):
    """{command: usec} of every command so far (bookkeeping ones left out)."""
    text = redis.call("INFO", "commandstats").decode()
    usec = {}
    for name, calls, spent in re.findall(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", text):
        if name.split("|")[0] not in IGNORED_COMMANDS:
            usec[name] = int(spent)
    return usec


def usec_since(redis, before):
    after = commandstats(redis)
    return sum(after.values()) - sum(before.values()), \
        {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def lifecycle(server, redis, jobs, queues):
    """Enqueue, dequeue and finish `jobs` jobs over HTTP: per phase the
    server's CPU us per request and Redis usec per request."""
    body = json.dumps({"interval": 0, "payload": PAYLOAD})
    phases = {}
    enqueues = [("POST", f"/enqueue/{QTYPE}/q{i % queues}/",
                 body[:-1] + f', "job_id": "j{i}"}}') for i in range(jobs)]
    dequeues = [("GET", f"/dequeue/{QTYPE}/", None)] * jobs
    for phase, requests in (("enqueue", enqueues), ("dequeue", dequeues)):
        phases[phase] = measured(server, redis, requests)
        answers = phases[phase].pop("answers")
    taken = [json.loads(b) for s, b in answers if s == 200]
    finishes = [("POST", f"/finish/{QTYPE}/{j['queue_id']}/{j['job_id']}/", None)
                for j in taken]
    phases["finish"] = measured(server, redis, finishes)
    phases["finish"].pop("answers")
    return phases


def measured(server, redis, requests):
    c0, r0, rc0 = server.cpu_s(), commandstats(redis), redis_cpu(redis)
    answers, seconds = drive(server.port, requests)
    cpu = server.cpu_s() - c0
    redis_cpu_s = redis_cpu(redis) - rc0
    _, per_command = usec_since(redis, r0)
    # the commands a script runs are counted in commandstats too (and in
    # the script's own usec): the scripts' usec, plus any command sent on
    # its own (the original's LLEN after each dequeue)
    scripts = sum(v for k, v in per_command.items() if k in ("fcall", "evalsha", "eval"))
    n = len(requests)
    return {"n": n, "statuses": dict(Counter(s for s, _ in answers)),
            "cpu_us": cpu * 1e6 / n, "redis_us": scripts / n,
            "redis_cpu_us": redis_cpu_s * 1e6 / n, "req_s": n / seconds,
            "commands": per_command, "answers": answers}


# ---------------------------------------------------------------- memory per job

def used_memory(redis):
    return int(redis.info("memory")["used_memory"])


def memory_sharqd(redis, jobs, queues):
    scripts = Scripts(redis)
    payload = json.dumps(PAYLOAD).encode()
    base = used_memory(redis)
    replies = redis.pipeline([scripts.enqueue_cmd(f"q{i % queues}", f"j{i}", payload)
                              for i in range(jobs)])
    stored = sum(1 for r in replies if isinstance(r, list) and r[0] == 201)
    queued = used_memory(redis)
    replies = redis.pipeline([scripts.dequeue_cmd(600000) for _ in range(jobs)])
    taken = sum(1 for r in replies if r)
    active = used_memory(redis)
    return {"stored": stored, "taken": taken, "queued_b": (queued - base) / jobs,
            "active_b": (active - base) / jobs}


def memory_original(redis, python, conf, jobs, queues, dequeue=True):
    def fill(*args):
        out = subprocess.run([str(python), str(HERE / "original_fill.py"), str(conf), *args],
                             capture_output=True, text=True, timeout=1800, check=True)
        return int(out.stdout.split()[-1])
    base = used_memory(redis)
    stored = fill("enqueue", str(jobs), str(queues), json.dumps(PAYLOAD))
    queued = used_memory(redis)
    result = {"stored": stored, "queued_b": (queued - base) / jobs}
    if dequeue:
        result["taken"] = fill("dequeue", str(jobs))
        result["active_b"] = (used_memory(redis) - base) / jobs
    return result


# ---------------------------------------------------------------- raw script rates

def redis_benchmark(port, n, command):
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "32", "-n", str(n),
                          "-r", "1000", "--csv", *map(str, command)],
                         capture_output=True, text=True, timeout=600, check=True)
    row = [line for line in out.stdout.splitlines()
           if line.startswith(('"EVALSHA', '"FCALL'))][-1]
    return float(row.rsplit(",", 7)[1].strip('"'))


def raw_enqueue(redis, port, original_lua, n):
    """calls/s of each side's enqueue script at 32 connections."""
    scripts = Scripts(redis)
    payload = json.dumps(PAYLOAD)
    jid = "j__rand_int__-__rand_int__-__rand_int__"
    redis.call("FLUSHALL")
    mine = redis_benchmark(port, n, scripts.enqueue_cmd("q__rand_int__", jid, payload))
    redis.call("FLUSHALL")
    sha = redis.call("SCRIPT", "LOAD", original_lua.read_bytes()).decode()
    # the original's arguments: timestamp, queue_id, job_id, payload
    # (msgpack there; the same bytes here), interval, requeue_limit
    theirs = redis_benchmark(port, n, ["EVALSHA", sha, 2, "original_bench", QTYPE,
                                       str(int(time.time() * 1000)), "q__rand_int__",
                                       jid, payload, 0, -1])
    redis.call("FLUSHALL")
    return mine, theirs


# ---------------------------------------------------------------- sharqd only: next round

def metrics_paging(redis, sharqd_port, queues):
    """/metrics/<type>/ over `queues` queues: pages of 10,000 to the end;
    the largest Redis call meanwhile (SLOWLOG, every call logged)."""
    key = "sharq_server:{paged}:queues"
    for start in range(0, queues, 10000):
        redis.call("SADD", key, *(f"queue-{i:07d}" for i in range(start, min(queues,
                                                                          start + 10000))))
    redis.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
    redis.call("SLOWLOG", "RESET")
    redis.call("SMEMBERS", key)  # what one call did before (metrics.lua, scope "type")
    smembers = max(int(e[2]) for e in redis.call("SLOWLOG", "GET", "10")
                   if e[3][0].upper() == b"SMEMBERS")
    redis.call("SLOWLOG", "RESET")
    conn = http.client.HTTPConnection("127.0.0.1", sharqd_port, timeout=60)
    started, seen, pages, first_bytes = time.monotonic(), 0, 0, 0
    while True:
        conn.request("GET", f"/metrics/paged/?offset={seen}&limit=10000")
        raw = conn.getresponse().read()
        page = json.loads(raw)["queue_ids"]
        first_bytes = first_bytes or len(raw)
        pages += 1
        seen += len(page)
        if not page:
            break
    seconds = time.monotonic() - started
    entries = redis.call("SLOWLOG", "GET", "100000")
    redis.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    worst = max(entries, key=lambda e: int(e[2]))
    scans = sorted(int(e[2]) for e in entries if e[3][0].upper() == b"SSCAN")
    return {"queues": queues, "seen": seen, "pages": pages, "seconds": seconds,
            "first_page_bytes": first_bytes, "smembers_us": smembers,
            "max_call_us": int(worst[2]), "median_scan_us": scans[len(scans) // 2], "max_call": worst[3][0].decode().upper(),
            "calls": len(entries)}


def idle_types(redis, twistd, tmp, types, window, registered_ago=0):
    """sharqd and Redis CPU (% of a core) over `window` s with `types`
    queue types holding one pending job each and nothing to requeue,
    registered `registered_ago` s ago (an hour: the requeue sweep checks
    whether each type may leave the registry)."""
    scripts = Scripts(redis)
    redis.call("FLUSHALL")
    redis.pipeline([scripts.enqueue_cmd("q", "j", b"{}", qtype=f"t{i}") for i in range(types)])
    # registered as sharqd registers a type before its first enqueue: the
    # requeue pass finds the types in the registry
    then = int(time.time()) - registered_ago
    redis.pipeline([["ZADD", "sharq_server:registry", then, f"t{i}"] for i in range(types)])
    server = Sharqd(tmp, redis.port, twistd, prefix="sharq_server").start()
    try:
        return dict(idle_window(server, lambda: redis_cpu(redis), types, window),
                    registered_ago=registered_ago)
    finally:
        server.stop()
        redis.call("FLUSHALL")


def idle_window(server, redis_cpu_s, types, window):
    time.sleep(3)  # the first passes, connections warmed up
    c0, r0, t0 = server.cpu_s(), redis_cpu_s(), time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    return {"types": types, "sharqd_pct": 100 * (server.cpu_s() - c0) / elapsed,
            "redis_pct": 100 * (redis_cpu_s() - r0) / elapsed}


def start_cluster(masters=3):
    """A Redis Cluster of `masters` masters, no replicas, on free ports."""
    nodes = [processes.RedisServer(port=processes.free_cluster_port(), options=[
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]).start()
        for _ in range(masters)]
    subprocess.run(["redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    processes.wait_for(lambda: all(b"cluster_state:ok" in Redis(port=n.port).call(
        "CLUSTER", "INFO") for n in nodes), timeout=30, step=0.2)
    return nodes


def backdate_registry(nodes, types, seconds):
    """The registry's scores of types t0.. moved `seconds` back, on the
    node that holds the registry."""
    then = int(time.time()) - seconds
    for node in nodes:
        redis = Redis(port=node.port)
        try:
            redis.call("ZCARD", "sharq_server:registry")
        except RespError:  # MOVED: another node holds it
            continue
        finally:
            redis.close()
        redis = Redis(port=node.port)
        redis.pipeline([["ZADD", "sharq_server:registry", then, f"t{i}"]
                        for i in range(types)])
        redis.close()
        return
    raise RuntimeError("no node holds the registry")


def idle_types_cluster(twistd, tmp, types, window, masters=3, registered_ago=0):
    """idle_types on a Redis Cluster of `masters` masters: the types are
    enqueued (and registered) over HTTP, then their registration moved
    `registered_ago` s back; Redis CPU is that of all nodes from /proc,
    and the same window after sharqd stopped is given too (the nodes' own
    cluster bus and cron)."""
    nodes = start_cluster(masters)
    try:
        nodes_cpu = lambda: sum(processes.cpu_seconds(n.pid) for n in nodes)  # noqa: E731
        server = Sharqd(tmp, nodes[0].port, twistd, prefix="sharq_server",
                        redis="clustered : true").start()
        try:
            body = json.dumps({"job_id": "j", "interval": 0, "payload": {}})
            answers, _ = drive(server.port, [("POST", f"/enqueue/t{i}/q/", body)
                                             for i in range(types)])
            if any(status != 201 for status, _ in answers):
                raise RuntimeError(f"cluster fill: {Counter(s for s, _ in answers)}")
            if registered_ago:
                backdate_registry(nodes, types, registered_ago)
            row = idle_window(server, nodes_cpu, types, window)
        finally:
            server.stop()
        r0, t0 = nodes_cpu(), time.monotonic()
        time.sleep(window)
        row["redis_alone_pct"] = 100 * (nodes_cpu() - r0) / (time.monotonic() - t0)
        row["masters"], row["registered_ago"] = masters, registered_ago
        return row
    finally:
        for node in nodes:
            node.cleanup()


def requeue_at_scale(redis, twistd, tmp, jobs):
    """`jobs` active jobs (1,000 queues) whose leases all ended at the same
    moment, then a sharqd starts: seconds until its requeue passes have put
    them all back, and the latency of an enqueue (another type) sent every
    10 ms meanwhile."""
    scripts = Scripts(redis)
    redis.call("FLUSHALL")
    then = int(time.time() * 1000) - 60000  # the scripts' clock for the fill
    head = lambda: [f"sharq_server:{{{QTYPE}}}", "sharq_server", QTYPE, then]  # noqa: E731
    for start in range(0, jobs, 50000):
        part = range(start, min(jobs, start + 50000))
        redis.pipeline([scripts.command("enqueue", head(), f"q{i % 1000}", f"j{i}", 0,
                                        b'{"n":1}', -1, "") for i in part])
        redis.pipeline([scripts.command("dequeue", head(), 1000) for _ in part])
    active = int(redis.call("ZCARD", f"sharq_server:{{{QTYPE}}}:deadlines"))
    # registered, as sharqd registers a type before its first enqueue (an
    # unregistered type is never passed)
    redis.call("ZADD", "sharq_server:registry", int(time.time()), QTYPE)
    server = Sharqd(tmp, redis.port, twistd, prefix="sharq_server").start()
    latencies, done = [], threading.Event()

    def enqueue_meanwhile():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        k = 0
        while not done.is_set():
            started = time.monotonic()
            conn.request("POST", f"/enqueue/other/q{k % 10}/", json.dumps(
                {"job_id": f"o{k}", "interval": 0, "payload": 1}))
            conn.getresponse().read()
            latencies.append(time.monotonic() - started)
            k += 1
            time.sleep(0.01)

    probe = threading.Thread(target=enqueue_meanwhile)
    started = time.monotonic()
    c0, r0 = server.cpu_s(), redis_cpu(redis)
    probe.start()
    try:
        processes.wait_for(lambda: int(redis.call(
            "ZCARD", f"sharq_server:{{{QTYPE}}}:deadlines")) == 0, timeout=3600, step=0.1)
        seconds = time.monotonic() - started
        # CPU time holds on a busy machine better than the seconds (the
        # probe's enqueues are in it, about 0.1 ms each)
        sharqd_cpu, redis_cpu_s = server.cpu_s() - c0, redis_cpu(redis) - r0
    finally:
        done.set()
        probe.join()
        server.stop()
        redis.call("FLUSHALL")
    latencies.sort()
    return {"jobs": active, "seconds": seconds, "enqueues": len(latencies),
            "sharqd_cpu_s": sharqd_cpu, "redis_cpu_s": redis_cpu_s,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "max_ms": 1000 * latencies[-1]}


def redis_cpu(redis):
    info = redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# ---------------------------------------------------------------- report

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def report(meta, http_rows, memory, raw, paging, idle, requeue, idle_cluster=()):
    out = [MARK, "## Side by side with the original SharQ Server", ""]
    out += [f"- {line}" for line in meta] + [""]
    if http_rows:
        out += side_by_side(http_rows, memory, raw)
    out += ["", "### sharqd alone: figures for the next round", ""]
    return "\n".join(out + alone(paging, idle, requeue, idle_cluster)) + "\n"


def side_by_side(http_rows, memory, raw):
    out = ["### CPU and Redis time per request (same HTTP workload, one Redis)", "",
            "Server CPU: utime+stime of the server's process tree per request (sharqd "
            "workers = 1; original: gunicorn master + 1 gevent worker).  Script time: "
            "usec of FCALL/EVALSHA/EVAL in INFO commandstats per request (the server's own "
            "requeue loop included).  Redis CPU: Redis' own utime+stime (INFO cpu) per "
            "request, network work included.  ratio = sharqd / original (lower is "
            "better for sharqd).", "",
            "| op | requests | sharqd CPU us/req | original CPU us/req | ratio | sharqd script us/req | original script us/req | ratio | sharqd Redis CPU us/req | original Redis CPU us/req | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    life = {(side, k): 0.0 for side in SIDES for k in ("redis_us", "redis_cpu_us")}
    for op in ("enqueue", "dequeue", "finish"):
        s, o = http_rows["sharqd"][op], http_rows["original"][op]
        for k in ("redis_us", "redis_cpu_us"):
            life["sharqd", k] += s[k]
            life["original", k] += o[k]
        out.append(f"| {op} | {s['n']:,} | {s['cpu_us']:.0f} | {o['cpu_us']:.0f} | "
                   f"{ratio(s['cpu_us'], o['cpu_us'])} | {s['redis_us']:.1f} | "
                   f"{o['redis_us']:.1f} | {ratio(s['redis_us'], o['redis_us'])} | "
                   f"{s['redis_cpu_us']:.1f} | {o['redis_cpu_us']:.1f} | "
                   f"{ratio(s['redis_cpu_us'], o['redis_cpu_us'])} |")
    a, b = life["sharqd", "redis_us"], life["original", "redis_us"]
    c, d = life["sharqd", "redis_cpu_us"], life["original", "redis_cpu_us"]
    out.append(f"| **job lifecycle** | | | | | **{a:.1f}** | **{b:.1f}** | "
               f"**{ratio(a, b)}** | **{c:.1f}** | **{d:.1f}** | **{ratio(c, d)}** |")
    out += ["", "Statuses: " + "; ".join(
        f"{side} {op} {http_rows[side][op]['statuses']}" for side in SIDES
        for op in ("enqueue", "dequeue", "finish"))]
    out += ["", "Redis usec by command over the whole lifecycle workload (a script's "
            "commands are counted within its FCALL or EVALSHA and again on their own):", ""]
    for side in SIDES:
        per = Counter()
        for op in ("enqueue", "dequeue", "finish"):
            per.update(http_rows[side][op]["commands"])
        out.append(f"- {side}: " + ", ".join(f"{k} {v:,}" for k, v in per.most_common()))
    out += ["", "### Redis memory per job", "",
            f"used_memory over {memory['jobs']:,} jobs (payload {len(json.dumps(PAYLOAD))} "
            "bytes of JSON), filled with each side's own scripts; active = after every job "
            "was dequeued.", "",
            "| queue_ids | sharqd queued B/job | original queued B/job | ratio | sharqd active B/job | original active B/job | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for queues, row in memory["rows"]:
        s, o = row["sharqd"], row["original"]
        oa = o.get("active_b")
        out.append(f"| {queues:,} | {s['queued_b']:.0f} | {o['queued_b']:.0f} | "
                   f"{ratio(s['queued_b'], o['queued_b'])} | {s['active_b']:.0f} | "
                   + (f"{oa:.0f} | {ratio(s['active_b'], oa)} |" if oa is not None else
                      "n/a | n/a (the original's dequeue reads every ready queue: "
                      "O(queues) per call) |"))
    if raw:
        out += ["", "### Enqueue script alone (redis-benchmark, 32 connections)", "",
                "| | sharqd calls/s | original calls/s | ratio |", "|---|---:|---:|---:|",
                f"| enqueue | {raw[0]:,.0f} | {raw[1]:,.0f} | {ratio(raw[0], raw[1])} |"]
    return out


def alone(paging, idle, requeue, idle_cluster):
    out = []
    if paging:
        out += [f"- `/metrics/<type>/` over {paging['queues']:,} queues, pages of 10,000 to "
                f"the end: {paging['seen']:,} ids in {paging['pages']} pages, "
                f"{paging['seconds']:.2f} s; first page {paging['first_page_bytes']:,} bytes; "
                f"largest single Redis call {paging['max_call_us'] / 1000:.2f} ms "
                f"({paging['max_call']}) over "
                f"{paging['calls']:,} calls, SSCAN median {paging['median_scan_us'] / 1000:.2f} ms "
                f"(one SMEMBERS of the set, as before paging: "
                f"{paging['smembers_us'] / 1000:.1f} ms)"]
    if requeue:
        out.append(f"- requeue at scale: {requeue['jobs']:,} active jobs (1,000 queues) "
                   f"whose leases ended at the same moment, put back by sharqd's requeue "
                   f"passes in {requeue['seconds']:.1f} s (from sharqd's start; CPU time "
                   f"meanwhile: sharqd {requeue['sharqd_cpu_s']:.1f} s, Redis "
                   f"{requeue['redis_cpu_s']:.1f} s); an enqueue "
                   f"every 10 ms meanwhile ({requeue['enqueues']:,}): p99 "
                   f"{requeue['p99_ms']:.1f} ms, max {requeue['max_ms']:.1f} ms")
    for row in idle:
        ago = _registered_ago(row)
        out.append(f"- requeue pass, {row['types']:,} idle types (one pending job each, "
                   f"nothing expiring{ago}): sharqd {row['sharqd_pct']:.1f}% of a core, Redis "
                   f"{row['redis_pct']:.1f}%")
    for row in idle_cluster:
        ago = _registered_ago(row)
        out.append(f"- requeue pass on a Redis Cluster of {row['masters']} masters, "
                   f"{row['types']:,} idle types{ago}: sharqd {row['sharqd_pct']:.1f}% of a core, "
                   f"Redis (all nodes) {row['redis_pct']:.1f}% (the nodes alone, without "
                   f"sharqd: {row['redis_alone_pct']:.1f}%)")
    out.append(MARK)
    return out


def _registered_ago(row):
    return (f", registered {row['registered_ago'] // 60} minutes ago"
            if row.get("registered_ago") else "")


def write_results(markdown):
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if MARK in text:
        before, _, rest = text.partition(MARK)
        _, _, after = rest.partition(MARK)
        text = before.rstrip("\n") + "\n\n" + markdown + after.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + markdown
    RESULTS.write_text(text)


def save_figures(http_rows, memory, raw, idle, requeue, quick, idle_cluster=()):
    """What bench/floors.py judges, to bench/RESULTS.json."""
    import figures
    per_op = {side: {op: {k: row[k] for k in ("cpu_us", "redis_us", "redis_cpu_us")}
                     for op, row in rows.items()} for side, rows in http_rows.items()}
    lifecycle = {f"{side}_redis_us": sum(row["redis_us"] for row in per_op[side].values())
                 for side in per_op}
    figures.save("sidebyside", {
        "http": per_op, "lifecycle": lifecycle if len(per_op) == 2 else None,
        "memory": memory["rows"] if memory else [], "raw_enqueue": raw,
        "idle": list(idle), "idle_cluster": list(idle_cluster), "requeue": requeue},
        quick=quick)


# ---------------------------------------------------------------- main

PARTS = ("http", "memory", "raw", "paging", "idle", "idle-cluster", "requeue")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=str(ROOT / ".venv" / "bin" / "twistd"))
    parser.add_argument("--original", default=str(ROOT.parent / "shared" / "original"),
                        help="the original's stand-in (README there)")
    parser.add_argument("--original-venv", default=str(ROOT / ".venv-original"))
    parser.add_argument("--jobs", type=int, default=5000, help="jobs of the HTTP workload")
    parser.add_argument("--mem-jobs", type=int, default=100000)
    parser.add_argument("--requeue-jobs", type=int, default=1000000)
    parser.add_argument("--idle-types", default="2000,20000",
                        help="numbers of idle types, comma-separated")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke test")
    parser.add_argument("--only", default=",".join(PARTS),
                        help="comma-separated parts to run (%s); printed, not "
                        "written, unless all run" % ", ".join(PARTS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(PARTS):
        parser.error(f"--only: unknown parts {sorted(only - set(PARTS))}")
    if args.quick:
        args.jobs, args.mem_jobs, args.requeue_jobs = 500, 5000, 20000
        args.idle_types = "200"
    idle_counts = [int(n) for n in args.idle_types.split(",")]
    window = 3 if args.quick else 10
    source, venv = Path(args.original).resolve(), Path(args.original_venv).resolve()
    if only & {"http", "memory", "raw"}:
        only |= {"http", "memory", "raw"}  # the side-by-side tables go together
        original_venv(source, venv)
        lua = next(venv.glob("lib/python3*/site-packages/sharq/scripts/lua/enqueue.lua"))
    load = os.getloadavg()
    meta = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
            "at start: **a machine shared with other developers' tests and benches**; "
            "counters (CPU time, Redis usec, bytes) rather than rates",
            "original: the PyPI sharq 1.3.0 library behind Flask on gunicorn -k gevent "
            "-w 1 (the stand-in in ../shared/original)",
            f"HTTP workload: {args.jobs:,} jobs over 1,000 queues (interval 0), enqueued, "
            "dequeued and finished over 4 keep-alive connections, first sharqd, then the "
            "original, each with only its own server running"]
    http_rows, memory, raw, paging, idle, requeue, idle_cluster = {}, None, None, None, [], \
        None, []
    with tempfile.TemporaryDirectory(prefix="sharqd-sidebyside-") as tmpdir:
        tmp = Path(tmpdir)
        redis_server = processes.RedisServer(options=["--maxclients", "10000"]).start()
        redis = Redis(port=redis_server.port)
        redis.port = redis_server.port
        try:
            meta.append(f"Redis {redis.info('server')['redis_version']}, one "
                        "redis-server for both (own process, no persistence)")
            if "http" in only:
                for side in SIDES:
                    redis.call("FLUSHALL")
                    server = (Sharqd(tmp, redis.port, args.twistd) if side == "sharqd" else
                              Original(tmp, redis.port, venv, source))
                    server.start()
                    try:
                        log(f"{side}: HTTP workload")
                        http_rows[side] = lifecycle(server, redis, args.jobs, 1000)
                    finally:
                        server.stop()
            if "memory" in only:
                memory = {"jobs": args.mem_jobs, "rows": []}
                conf = tmp / "original-fill.conf"
                conf.write_text(original_conf(redis.port, "original_bench"))
                for queues in (1000, 100000):
                    row = {}
                    redis.call("FLUSHALL")
                    log(f"memory, {queues} queue_ids: sharqd")
                    row["sharqd"] = memory_sharqd(redis, args.mem_jobs, queues)
                    redis.call("FLUSHALL")
                    log(f"memory, {queues} queue_ids: original")
                    row["original"] = memory_original(redis, venv / "bin" / "python", conf,
                                                      args.mem_jobs, queues,
                                                      dequeue=queues <= 1000)
                    memory["rows"].append((queues, row))
            if "raw" in only:
                redis.call("FLUSHALL")
                log("redis-benchmark of both enqueue scripts")
                raw = raw_enqueue(redis, redis.port, lua, 20000 if not args.quick else 2000)
            if "paging" in only:
                log("metrics paging")
                server = Sharqd(tmp, redis.port, args.twistd, prefix="sharq_server").start()
                try:
                    paging = metrics_paging(redis, server.port,
                                            20000 if args.quick else 200000)
                finally:
                    server.stop()
            for types in idle_counts if "idle" in only else ():
                log(f"requeue pass with {types} idle types")
                idle.append(idle_types(redis, args.twistd, tmp, types, window))
            if "idle" in only:
                log(f"requeue pass with {idle_counts[-1]} idle types registered long ago")
                idle.append(idle_types(redis, args.twistd, tmp, idle_counts[-1], window,
                                       registered_ago=3600))
            for types in idle_counts if "idle-cluster" in only else ():
                log(f"requeue pass with {types} idle types on a Redis Cluster")
                idle_cluster.append(idle_types_cluster(args.twistd, tmp, types, window))
            if "idle-cluster" in only:
                log(f"requeue pass with {idle_counts[-1]} idle types registered long ago "
                    "on a Redis Cluster")
                idle_cluster.append(idle_types_cluster(args.twistd, tmp, idle_counts[-1],
                                                       window, registered_ago=3600))
            if "requeue" in only:
                log(f"requeue of {args.requeue_jobs} expired jobs")
                requeue = requeue_at_scale(redis, args.twistd, tmp, args.requeue_jobs)
        finally:
            redis.close()
            redis_server.cleanup()
    markdown = report(meta, http_rows, memory, raw, paging, idle, requeue, idle_cluster)
    print(markdown)
    if not args.no_write and only == set(PARTS):
        write_results(markdown)
        save_figures(http_rows, memory, raw, idle, requeue, args.quick, idle_cluster)


if __name__ == "__main__":
    main()
