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
  * the raw rate of the same Lua scripts (EVALSHA, what the op uses of
    common.lua + op, exactly as sharqd loads them) by redis-benchmark at the
    same concurrency;
  * the Redis time of the dequeue script with 1, 1,000 and 100,000 ready
    queues (SLOWLOG with slowlog-log-slower-than 0);
  * the performance floors, each met or MISSED.

Numbers only: nothing here is a pass/fail test, and the exit status is 0
even when floors are missed (1 only when the bench itself could not run).
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import processes  # noqa: E402  (the process harness shared with the tests)
from sharqd.queue.lua import script_text  # noqa: E402  (stdlib only)
from processes import CLK_TCK, free_port, process_tree  # noqa: E402
from resp import Redis, RespError  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def in_repo(text):
    """text with this checkout's absolute path written as a relative one:
    the results name no path of the machine they were taken on."""
    return str(text).replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")
PREFIX = "sharq_server"
QTYPE = "bench"
BASE = f"{PREFIX}:{{{QTYPE}}}"
NQUEUES = 1000          # queues the wrk and redis-benchmark loads spread over
WORKLOADS = ("enqueue", "dequeue", "dequeue_finish")
LABEL = {"enqueue": "enqueue", "dequeue": "dequeue", "dequeue_finish": "dequeue+finish"}

FLOOR_RATE = {"enqueue": 3500, "dequeue": 3500, "dequeue_finish": 1600}
FLOOR_P99_MS = 40
FLOOR_CPU_US = 250
FLOOR_W2_SPEEDUP = 1.4
FLOOR_SCALING = 1.5


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Deadline:
    def __init__(self, minutes):
        self.end = time.monotonic() + minutes * 60

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise BenchError(f"time budget spent before {what}")


# ---------------------------------------------------------------- processes

def machine_busy_ticks():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals[:8]) - idle


def stop_group(proc, name, grace=15):
    """SIGTERM the process group, then SIGKILL what is left."""
    if not processes.stop_group(proc, grace):
        log(f"warning: could not stop all of {name}'s process group {proc.pid}")


class RedisServer:
    """The bench's redis-server (tests/processes.py) and a client of it."""

    def __init__(self, binary, tmp):
        self.server = processes.RedisServer(options=[
            "--protected-mode", "no", "--logfile", str(tmp / "redis.log"),
            "--slowlog-max-len", "20000", "--maxclients", "10000"])
        self.server.start()
        self.port, self.proc = self.server.port, self.server.process
        self.client = Redis(port=self.port)

    def cpu_s(self):
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def version(self):
        return self.client.info("server")["redis_version"]

    def stop(self):
        try:
            self.client.close()
        except Exception:
            pass
        stop_group(self.proc, "redis-server", grace=10)
        self.server.cleanup()


class Sharqd:
    def __init__(self, twistd, env, tmp, redis_port, workers, expire_ms, tag):
        self.workers = workers
        self.port = free_port()
        self.conf = tmp / f"sharqd-{tag}.ini"
        self.conf.write_text(
            "[sharq]\n"
            f"job_expire_interval : {expire_ms}\n"
            "job_requeue_interval : 1000\n"
            "[sharq-server]\n"
            "host : 127.0.0.1\n"
            f"port : {self.port}\n"
            f"workers : {workers}\n"
            "[redis]\n"
            "host : 127.0.0.1\n"
            f"port : {redis_port}\n"
            "db : 0\n"
            f"key_prefix : {PREFIX}\n")
        self.logfile = tmp / f"sharqd-{tag}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(
                [twistd, "-n", "--pidfile=", "sharq", "-c", str(self.conf)],
                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.nprocs = len(process_tree(self.proc.pid))

    def _wait_ready(self):
        end = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"sharqd exited with {self.proc.returncode} at start:\n"
                                 + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/deepstatus/", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > end:
                raise BenchError("sharqd did not answer /deepstatus/ within 30 s:\n"
                                 + self.log_tail())
            time.sleep(0.2)
        time.sleep(1.0)  # let any worker processes come up too

    def log_tail(self, n=15):
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self):
        return self.proc.poll() is None

    def cpu_s(self):
        return processes.tree_cpu_seconds(self.proc.pid)

    def stop(self):
        stop_group(self.proc, "sharqd")


# ---------------------------------------------------------------- scripts

class Scripts:
    """The queue scripts as sharqd sends them (script_text: what the op
    uses of common.lua, then the op)."""

    def __init__(self, redis):
        self.sha = {}
        for op in ("enqueue", "dequeue", "finish"):
            text = script_text(op)
            sha = redis.call("SCRIPT", "LOAD", text).decode()
            if sha != hashlib.sha1(text).hexdigest():
                raise BenchError(f"SCRIPT LOAD sha of {op} differs from sha1 of its text")
            self.sha[op] = sha

    @staticmethod
    def head(qtype):
        """ARGV[1..4]: base "<prefix>:{<type>}", prefix, type, now ("": Redis clock)."""
        return [f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, ""]

    def enqueue_cmd(self, qid, jid, payload=b'{"n":1}', qtype=QTYPE):
        return ["EVALSHA", self.sha["enqueue"], 0, *self.head(qtype),
                qid, jid, 0, payload, -1, ""]

    def dequeue_cmd(self, lease=1000, qtype=QTYPE):
        return ["EVALSHA", self.sha["dequeue"], 0, *self.head(qtype), lease]

    def finish_cmd(self, qid, jid, qtype=QTYPE):
        return ["EVALSHA", self.sha["finish"], 0, *self.head(qtype), qid, jid]


def check_replies(replies, what):
    bad = [r for r in replies if isinstance(r, RespError)]
    if bad:
        raise BenchError(f"{what}: {len(bad)} errors, first: {bad[0]}")


def prefill(redis, scripts, n, tag, queues=NQUEUES):
    """n ready jobs (interval 0) spread over `queues` queues."""
    t = time.monotonic()
    cmds = [scripts.enqueue_cmd(f"q{i % queues}", f"{tag}-{i}", b'{"n":%d}' % i)
            for i in range(n)]
    replies = redis.pipeline(cmds)
    check_replies(replies, "prefill")
    created = sum(1 for r in replies if r and r[0] == 201)
    if created != n:
        raise BenchError(f"prefill: {created} of {n} jobs created")
    return time.monotonic() - t


# ---------------------------------------------------------------- wrk

def run_wrk(wrk, url, workload, conns, duration, args):
    cmd = [wrk, "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "2s",
           "-s", str(HERE / f"{workload}.lua"), url, "--", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stdout[-800:]} "
                         f"{proc.stderr[-800:]}")
    result = json.loads(line[len("WRKJSON "):])
    result["wrk_cpu_s"] = (after.ru_utime - before.ru_utime
                           + after.ru_stime - before.ru_stime)
    result["stderr"] = proc.stderr.strip().splitlines()[:3]
    return result


# ---------------------------------------------------------------- raw redis-benchmark

def redis_benchmark(binary, port, conns, n, rand, args, timeout):
    cmd = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(conns), "-n", str(n),
           "--csv", *(["-r", str(rand)] if rand else []), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    rows = [l for l in proc.stdout.splitlines() if l.startswith('"EVALSHA')]
    if proc.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed ({proc.returncode}): "
                         f"{proc.stdout[-500:]} {proc.stderr[-500:]}")
    # the test name holds unescaped quotes: take the 7 numbers from the right
    nums = [float(x.strip('"')) for x in rows[-1].rsplit(",", 7)[1:]]
    return {"rps": nums[0], "p50_ms": nums[3], "p99_ms": nums[5]}


def raw_benchmarks(rs, scripts, rb_bin, conns_list, n, deadline):
    """Rate of each script run by redis-benchmark straight on Redis."""
    r = rs.client
    out = []
    jid = "j__rand_int__-__rand_int__-__rand_int__-__rand_int__"
    for conns in conns_list:
        deadline.check("raw benchmarks")
        # enqueue: unique job ids (4 random numbers), 1,000 queues as wrk
        r.call("FLUSHALL")
        c0 = rs.cpu_s()
        res = redis_benchmark(rb_bin, rs.port, conns, n, NQUEUES,
                              scripts.enqueue_cmd("q__rand_int__", jid), 300)
        res["cpu_us"] = (rs.cpu_s() - c0) * 1e6 / n
        jobs = sum(r.pipeline([["LLEN", k] for k in scan_keys(r, f"{BASE}:pending:*")]))
        res["note"] = f"{jobs} of {n} jobs stored (rest: id collisions, 409)"
        out.append(("enqueue", conns, n, res))
        log(f"raw enqueue c={conns}: {res['rps']:.0f}/s")

        # dequeue: n + 10% ready jobs in 1,000 queues first
        r.call("FLUSHALL")
        prefill(r, scripts, n + n // 10, "raw")
        c0 = rs.cpu_s()
        res = redis_benchmark(rb_bin, rs.port, conns, n, 0, scripts.dequeue_cmd(1000), 300)
        res["cpu_us"] = (rs.cpu_s() - c0) * 1e6 / n
        active = r.call("ZCARD", f"{BASE}:deadlines")
        res["note"] = f"{active} of {n} calls handed out a job"
        out.append(("dequeue", conns, n, res))
        log(f"raw dequeue c={conns}: {res['rps']:.0f}/s")

        # finish: R active jobs j<12 digits> in one queue; redis-benchmark
        # draws job ids at random, so some calls hit an already finished job
        pool = max(4 * (n // 4), 1000)
        nf = max(n // 4, 100)
        r.call("FLUSHALL")
        replies = r.pipeline([scripts.enqueue_cmd("raw", "j%012d" % i) for i in range(pool)])
        check_replies(replies, "finish prefill")
        replies = r.pipeline([scripts.dequeue_cmd(3600000) for _ in range(pool)])
        check_replies(replies, "finish prefill dequeue")
        c0 = rs.cpu_s()
        res = redis_benchmark(rb_bin, rs.port, conns, nf, pool,
                              scripts.finish_cmd("raw", "j__rand_int__"), 300)
        res["cpu_us"] = (rs.cpu_s() - c0) * 1e6 / nf
        done = pool - r.call("ZCARD", f"{BASE}:deadlines")
        res["note"] = (f"{done} of {nf} calls finished an active job (random ids over "
                       f"{pool} jobs; the rest hit a finished one, a cheaper path)")
        out.append(("finish", conns, nf, res))
        log(f"raw finish c={conns}: {res['rps']:.0f}/s")
    r.call("FLUSHALL")
    return out


def scan_keys(r, pattern):
    keys, cursor = [], b"0"
    for _ in range(100000):
        cursor, batch = r.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        keys.extend(batch)
        if cursor == b"0":
            break
    return keys


# ---------------------------------------------------------------- dequeue scaling

def dequeue_scaling(rs, scripts, sizes, k):
    """Redis time of the dequeue script with N ready queues.  Each size gets
    its own queue type holding N queues with one ready job each; then k rounds
    visit every size in turn (so that load from elsewhere hits all sizes
    alike): dequeue, finish that job, enqueue a new one into the same queue
    (N stays ready).  The dequeue times are SLOWLOG entries
    (slowlog-log-slower-than 0)."""
    r = rs.client
    out = []
    dsha = scripts.sha["dequeue"].encode()
    qtypes = {n: f"scale{n}" for n in sizes}
    ready_key = {n: f"{PREFIX}:{{{qtypes[n]}}}:ready" for n in sizes}
    try:
        r.call("FLUSHALL")
        fill_s = {}
        for n in sizes:
            t = time.monotonic()
            check_replies(r.pipeline([scripts.enqueue_cmd(f"s{i}", f"a{i}", qtype=qtypes[n])
                                      for i in range(n)]), "scaling fill")
            fill_s[n] = time.monotonic() - t
        ready = {n: r.call("ZCARD", ready_key[n]) for n in sizes}
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        r.call("SLOWLOG", "RESET")
        rtts = {n: [] for n in sizes}
        entries = []
        for i in range(k):
            if i % 40 == 0:
                collect_slowlog(r, dsha, entries)
            order = sizes[i % len(sizes):] + sizes[:i % len(sizes)]
            for n in order:
                t0 = time.perf_counter()
                job = r.call(*scripts.dequeue_cmd(1000, qtype=qtypes[n]))
                rtts[n].append((time.perf_counter() - t0) * 1e6)
                if job is None:
                    raise BenchError(f"scaling: dequeue found nothing with {n} queues")
                qid = job[0].decode()
                r.call(*scripts.finish_cmd(qid, job[1].decode(), qtype=qtypes[n]))
                r.call(*scripts.enqueue_cmd(qid, f"b{i}", qtype=qtypes[n]))
        collect_slowlog(r, dsha, entries)
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        for n in sizes:
            us = sorted(d for qt, d in entries if qt == qtypes[n].encode())
            if not us:
                raise BenchError(f"scaling: no dequeue entries in SLOWLOG for {n} queues")
            pct = lambda q: us[int(q * (len(us) - 1))]  # noqa: E731
            out.append({"n": n, "ready": ready[n], "ready_after": r.call("ZCARD", ready_key[n]),
                        "count": len(us), "median": statistics.median(us),
                        "mean": statistics.fmean(us), "min": us[0], "p10": pct(0.10),
                        "p99": pct(0.99), "rtt_median": statistics.median(rtts[n]),
                        "fill_s": fill_s[n]})
            log(f"scaling N={n}: median {out[-1]['median']} us (SLOWLOG), "
                f"{len(us)} dequeues")
    finally:
        r.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        r.call("FLUSHALL")
    return out


def collect_slowlog(r, sha, into):
    """Move (queue type, us) of the EVALSHA <sha> entries out of SLOWLOG (which
    also logs every redis.call inside the scripts, hence the small batches)."""
    n = r.call("SLOWLOG", "LEN")
    if n:
        entries = r.call("SLOWLOG", "GET", n)
        r.call("SLOWLOG", "RESET")
        if n >= 20000:
            raise BenchError("scaling: SLOWLOG overflowed")
        # args: EVALSHA sha 0 base prefix type now ...
        into.extend((e[3][5], e[2]) for e in entries
                    if len(e[3]) > 5 and e[3][0].upper() == b"EVALSHA" and e[3][1] == sha)


# ---------------------------------------------------------------- sharqd runs

def wait_quiet(max_wait, threshold=25.0):
    """Between runs sharqd and Redis idle: wait (at most max_wait s) for the
    machine's CPU use, other processes', to fall under threshold % of a core.
    Returns the last 0.5 s sample."""
    end = time.monotonic() + max_wait
    while True:
        m0, t0 = machine_busy_ticks(), time.monotonic()
        time.sleep(0.5)
        pct = 100 * (machine_busy_ticks() - m0) / CLK_TCK / (time.monotonic() - t0)
        if pct < threshold or time.monotonic() >= end:
            return pct


def measure_run(rs, sq, wrk_bin, workload, conns, duration, run_tag, prefill_n, scripts,
                quiet_wait=0):
    r = rs.client
    r.call("FLUSHALL")
    prefill_s = 0.0
    if prefill_n:
        prefill_s = prefill(r, scripts, prefill_n, f"p{run_tag}")
    args = [QTYPE, str(NQUEUES), run_tag]
    quiet = wait_quiet(quiet_wait)
    s0, nprocs0 = sq.cpu_s()
    r0 = rs.cpu_s()
    m0 = machine_busy_ticks()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    w = run_wrk(wrk_bin, sq.url, workload, conns, duration, args)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    m1 = machine_busy_ticks()
    r1 = rs.cpu_s()
    s1, nprocs1 = sq.cpu_s()
    if not sq.alive():
        raise SharqdDied(f"sharqd exited ({sq.proc.returncode}) during the run:\n"
                         + sq.log_tail())
    secs = w["duration_us"] / 1e6
    reqs = max(w["requests"], 1)
    sharqd_cpu = s1 - s0
    redis_cpu = r1 - r0
    self_cpu = (self1.ru_utime - self0.ru_utime + self1.ru_stime - self0.ru_stime)
    machine = (m1 - m0) / CLK_TCK
    other = machine - sharqd_cpu - redis_cpu - w["wrk_cpu_s"] - self_cpu
    jobs = {"enqueue": w["ok"], "dequeue": w["ok"], "dequeue_finish": w["finished"]}[workload]
    return {
        "workers": sq.workers, "workload": workload, "conns": conns,
        "rps": w["requests"] / secs, "jobs_ps": jobs / secs,
        "requests": w["requests"], "ok": w["ok"], "n404": w["n404"],
        "other_status": w["other_status"], "finish404": w["finish404"],
        "finished": w["finished"],
        "connect": w["connect"], "read": w["read"], "write": w["write"],
        "timeout": w["timeout"],
        "errors": w["other_status"] + w["connect"] + w["read"] + w["write"] + w["timeout"],
        "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "sharqd_cpu_us": sharqd_cpu * 1e6 / reqs, "redis_cpu_us": redis_cpu * 1e6 / reqs,
        "sharqd_cpu_pct": 100 * sharqd_cpu / secs, "redis_cpu_pct": 100 * redis_cpu / secs,
        "wrk_cpu_pct": 100 * w["wrk_cpu_s"] / secs,
        "other_cpu_pct": max(0.0, 100 * other / secs),
        "nprocs": max(nprocs0, nprocs1), "prefill": prefill_n, "prefill_s": prefill_s,
        "pre_busy_pct": quiet,
        "wrk_stderr": w["stderr"],
    }


class SharqdDied(BenchError):
    pass


def sharqd_runs(rs, scripts, twistd, env, tmp, wrk_bin, args, deadline):
    runs = []
    notes = []
    plan = [(c, n) for c, n in ((32, args.runs), (64, args.runs64)) if n > 0]
    # jobs/s seen so far (warm-up first), to size the prefill of the next run
    seen_rate = {}
    for workers in args.workers:
        sq = None
        restarts = 0
        try:
            deadline.check(f"workers={workers}")
            sq = Sharqd(twistd, env, tmp, rs.port, workers, args.job_expire_ms,
                        f"w{workers}")
            log(f"sharqd workers={workers} up at {sq.url}: {sq.nprocs} process(es)")
            if workers > 1 and sq.nprocs < workers:
                notes.append(f"workers={workers}: sharqd ran {sq.nprocs} process(es), "
                             f"so these numbers are those of {sq.nprocs} process(es).")
            for workload in WORKLOADS:
                # short warm-up, not counted
                deadline.check("warm-up")
                pf = 0 if workload == "enqueue" else 20000
                try:
                    warm = measure_run(rs, sq, wrk_bin, workload, 32, 2,
                                       f"w{workers}warm", pf, scripts)
                    seen_rate[workload] = warm["jobs_ps"]
                except SharqdDied as e:
                    log(str(e))
                for conns, nruns in plan:
                    i = 0
                    attempts = 0
                    while i < nruns:
                        deadline.check(f"{workload} c={conns} run {i + 1}")
                        attempts += 1
                        if attempts > nruns + 3:
                            raise BenchError(f"{workload} c={conns}: too many failed runs")
                        tag = f"w{workers}{workload[:3]}c{conns}r{i}a{attempts}"
                        pf = 0
                        if workload != "enqueue":
                            pf = int(min(300000, max(10000, 1.3 * seen_rate.get(
                                workload, 5000) * args.duration + 2000)))
                        try:
                            if not sq.alive():
                                raise SharqdDied(f"sharqd exited ({sq.proc.returncode}) "
                                                 "between runs")
                            res = measure_run(rs, sq, wrk_bin, workload, conns,
                                              args.duration, tag, pf, scripts,
                                              args.quiet_wait)
                        except SharqdDied as e:
                            restarts += 1
                            msg = (f"workers={workers} {LABEL[workload]} c={conns}: sharqd "
                                   f"died during a run (discarded, sharqd restarted): "
                                   f"{str(e).splitlines()[0]}")
                            log(msg + "\n" + sq.log_tail(5))
                            notes.append(msg)
                            if restarts > 3:
                                raise
                            sq.stop()
                            sq = Sharqd(twistd, env, tmp, rs.port, workers,
                                        args.job_expire_ms, f"w{workers}-{restarts}")
                            continue
                        res["run"] = i + 1
                        runs.append(res)
                        if workload != "enqueue":
                            seen_rate[workload] = max(seen_rate.get(workload, 0),
                                                      res["jobs_ps"])
                        log(f"w={workers} {LABEL[workload]:15} c={conns} run {i + 1}: "
                            f"{res['rps']:.0f} req/s, {res['jobs_ps']:.0f} jobs/s, "
                            f"p99 {res['p99_ms']:.1f} ms, 404 {res['n404']}, "
                            f"errors {res['errors']}, sharqd {res['sharqd_cpu_us']:.0f} us/req,"
                            f" other CPU {res['other_cpu_pct']:.0f}%")
                        i += 1
        except BenchError as e:
            notes.append(f"workers={workers}: stopped early: {str(e).splitlines()[0]}")
            log(f"workers={workers}: {e}")
        finally:
            if sq is not None:
                sq.stop()
    return runs, notes


# ---------------------------------------------------------------- report

def fmt(x, nd=0):
    if x is None:
        return "-"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}"
    return f"{x:,.0f}"


def median_of(rows, key):
    vals = [r[key] for r in rows]
    return statistics.median(vals) if vals else None


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["workers"], r["workload"], r["conns"]), []).append(r)
    return groups


def raw_rate(raw, op, conns):
    for o, c, _, res in raw:
        if o == op and c == conns:
            return res["rps"]
    return None


def raw_for(raw, workload, conns):
    """Raw Redis-bound rate comparable to the workload's jobs/s."""
    if workload in ("enqueue", "dequeue"):
        return raw_rate(raw, workload, conns)
    d, f = raw_rate(raw, "dequeue", conns), raw_rate(raw, "finish", conns)
    if d and f:
        return 1 / (1 / d + 1 / f)
    return None


def floors(groups, scaling):
    rows = []

    def group(w, wl, c=32):
        return groups.get((w, wl, c))

    for wl in WORKLOADS:
        g = group(1, wl)
        what = {"enqueue": "enqueue req/s", "dequeue": "dequeue req/s (200s only)",
                "dequeue_finish": "dequeue+finish jobs/s (finishes)"}[wl]
        v = median_of(g, "jobs_ps") if g else None
        rows.append((f"workers=1 {what} >= {FLOOR_RATE[wl]:,} (32 conns)", fmt(v),
                     v is not None and v >= FLOOR_RATE[wl]))
    for wl in WORKLOADS:
        g = group(1, wl)
        v = median_of(g, "p99_ms") if g else None
        rows.append((f"workers=1 {LABEL[wl]} p99 <= {FLOOR_P99_MS} ms (32 conns)",
                     fmt(v, 1) + " ms" if v is not None else "-",
                     v is not None and v <= FLOOR_P99_MS))
    for wl in WORKLOADS:
        g = group(1, wl)
        v = median_of(g, "sharqd_cpu_us") if g else None
        rows.append((f"workers=1 {LABEL[wl]} sharqd CPU <= {FLOOR_CPU_US} us/request "
                     "(32 conns)", fmt(v) + " us" if v is not None else "-",
                     v is not None and v <= FLOOR_CPU_US))
    g1, g2 = group(1, "enqueue"), group(2, "enqueue")
    if g1 and g2:
        a, b = median_of(g1, "jobs_ps"), median_of(g2, "jobs_ps")
        v = b / a if a else None
        shown = f"{v:.2f}x ({fmt(b)} / {fmt(a)})" if v else "-"
    else:
        v, shown = None, "-"
    rows.append((f"workers=2 enqueue >= {FLOOR_W2_SPEEDUP}x workers=1 (32 conns)", shown,
                 v is not None and v >= FLOOR_W2_SPEEDUP))
    by_n = {s["n"]: s for s in scaling}
    if 1 in by_n and 100000 in by_n:
        a, b = by_n[1]["median"], by_n[100000]["median"]
        v = b / a if a else None
        shown = f"{v:.2f}x ({b:g} us / {a:g} us, SLOWLOG median)" if v else "-"
    else:
        v, shown = None, "-"
    rows.append((f"dequeue at 100,000 ready queues <= {FLOOR_SCALING}x its time at 1 queue",
                 shown, v is not None and v <= FLOOR_SCALING))
    return rows


def load_summary(runs, load_start):
    other = statistics.median(r["other_cpu_pct"] for r in runs)
    busy = sum(1 for r in runs if r["other_cpu_pct"] > 25)
    return (f"load average {' '.join(load_start)} at start; other processes used a "
            f"median {other:.0f}% of one core (of {100 * (os.cpu_count() or 1)}%) during "
            f"the measured runs, over 25% in {busy} of {len(runs)} runs"
            + (" -- **the machine was shared: rates and latencies are depressed; CPU "
               "us/request is the least affected figure**" if other > 25 else ""))


def report(meta, raw, scaling, runs, notes, floor_rows):
    L = []
    L.append("# sharqd benchmark results\n")
    for k, v in meta:
        L.append(f"- {k}: {v}")
    L.append("")
    missed = [r for r in floor_rows if not r[2]]
    L.append("## Floors\n")
    L.append("| Floor | Measured (median) | Result |")
    L.append("|---|---:|---|")
    for name, val, ok in floor_rows:
        L.append(f"| {name} | {val} | {'met' if ok else '**MISSED**'} |")
    L.append("")
    L.append(f"**{len(floor_rows) - len(missed)} of {len(floor_rows)} floors met"
             + (f"; MISSED: {len(missed)}**" if missed else "**"))
    L.append("")

    groups = summarize(runs)
    L.append("## sharqd under wrk (median of runs)\n")
    L.append("jobs/s: 201s/s for enqueue, 200s/s for dequeue, finishes/s for "
             "dequeue+finish.  errors = non-2xx other than the expected dequeue 404s "
             "+ socket errors (connect/read/write) + timeouts, summed over all runs.  "
             "raw = the same Lua script(s) run by redis-benchmark at the same "
             "concurrency (dequeue+finish: 1/(1/dequeue + 1/finish)); ratio = "
             "jobs/s / raw.  CPU us/req = CPU time over the run / requests answered "
             "(Redis: includes sharqd's requeue passes; in the dequeue workload jobs are "
             "never finished, so each comes back after the 1 s lease).  1-core ceiling = "
             "1e6 / sharqd CPU us/req: the req/s one sharqd process could reach with a "
             "whole core to itself at that CPU cost.\n")
    L.append("| workers | workload | conns | runs | req/s | jobs/s | p50 ms | p99 ms "
             "| 404s | errors | sharqd CPU us/req | 1-core ceiling req/s "
             "| Redis CPU us/req | sharqd procs | raw Redis /s | ratio |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (w, wl, c), g in sorted(groups.items(), key=lambda kv: (
            kv[0][0], WORKLOADS.index(kv[0][1]), kv[0][2])):
        jobs = median_of(g, "jobs_ps")
        rawv = raw_for(raw, wl, c)
        L.append(
            f"| {w} | {LABEL[wl]} | {c} | {len(g)} | {fmt(median_of(g, 'rps'))} "
            f"| {fmt(jobs)} | {fmt(median_of(g, 'p50_ms'), 1)} "
            f"| {fmt(median_of(g, 'p99_ms'), 1)} | {sum(r['n404'] for r in g)} "
            f"| {sum(r['errors'] for r in g)} | {fmt(median_of(g, 'sharqd_cpu_us'))} "
            f"| {fmt(1e6 / max(median_of(g, 'sharqd_cpu_us'), 1e-9))} "
            f"| {fmt(median_of(g, 'redis_cpu_us'), 1)} | {max(r['nprocs'] for r in g)} "
            f"| {fmt(rawv)} | {f'{jobs / rawv:.2f}' if rawv else '-'} |")
    L.append("")

    L.append("## Raw Lua script rate (redis-benchmark, EVALSHA of common.lua + op)\n")
    L.append("| script | conns | calls | calls/s | p50 ms | p99 ms | Redis CPU us/call "
             "| note |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for op, c, n, res in raw:
        L.append(f"| {op} | {c} | {n:,} | {fmt(res['rps'])} | {res['p50_ms']:.3f} "
                 f"| {res['p99_ms']:.3f} | {res['cpu_us']:.1f} | {res['note']} |")
    L.append("")

    L.append("## Dequeue time vs ready queues\n")
    L.append("Each size: its own queue type with N queues holding one ready job "
             "each.  Rounds visit the sizes in turn (so outside load hits them alike): "
             "a dequeue, then a finish and a new enqueue into the same queue so that "
             "N queues stay ready.  Redis time of each dequeue EVALSHA from SLOWLOG "
             "(slowlog-log-slower-than 0, 1 us resolution); round trip = client-side "
             "time of the same calls over loopback.\n")
    L.append("| ready queues | dequeues | Redis us median | min | p10 | mean | p99 "
             "| round trip us median | ready before / after |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in scaling:
        L.append(f"| {s['n']:,} | {s['count']:,} | {s['median']:g} | {s['min']:g} "
                 f"| {s['p10']:g} | {s['mean']:.1f} | {s['p99']:g} "
                 f"| {s['rtt_median']:.0f} | {s['ready']:,} / {s['ready_after']:,} |")
    L.append("")

    L.append("## All runs\n")
    L.append("sharqd/Redis/wrk % = CPU time / run time, as % of one core.  other = "
             "machine CPU time over the run not charged to sharqd, Redis, wrk or this "
             "driver (other processes, and kernel work such as softirqs not charged to "
             "any process).  busy before = machine CPU use in the 0.5 s before the run "
             "(after waiting up to --quiet-wait s for it to drop under 25%).\n")
    L.append("| workers | workload | conns | run | req/s | jobs/s | 2xx | 404 | other "
             "non-2xx | sock c/r/w | timeouts | p50 ms | p99 ms | max ms | sharqd us/req "
             "| Redis us/req | sharqd % | Redis % | wrk % | other % | busy before % | prefill |")
    L.append("|" + "---:|" * 3 + "---:|" * 19)
    for r in runs:
        L.append(
            f"| {r['workers']} | {LABEL[r['workload']]} | {r['conns']} | {r['run']} "
            f"| {fmt(r['rps'])} | {fmt(r['jobs_ps'])} | {r['ok']} | {r['n404']} "
            f"| {r['other_status']}"
            + (f" ({r['finish404']} late finish)" if r["finish404"] else "")
            + f" | {r['connect']}/{r['read']}/{r['write']} | {r['timeout']} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['sharqd_cpu_us']:.0f} | {r['redis_cpu_us']:.1f} "
            f"| {r['sharqd_cpu_pct']:.0f} | {r['redis_cpu_pct']:.0f} "
            f"| {r['wrk_cpu_pct']:.0f} | {r['other_cpu_pct']:.0f} "
            f"| {r['pre_busy_pct']:.0f} | {r['prefill']:,} |")
    L.append("")
    unexpected = [(r, l) for r in runs for l in r["wrk_stderr"]]
    if notes or unexpected:
        L.append("## Notes\n")
        for n in notes:
            L.append(f"- {n}")
        for r, l in unexpected[:10]:
            L.append(f"- workers={r['workers']} {LABEL[r['workload']]} c={r['conns']} "
                     f"run {r['run']}: wrk saw `{l[:200]}`")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- profile

def profile(rs, scripts, twistd, env, tmp, wrk_bin, args):
    """One workload (32 connections) against sharqd (workers 1) while py-spy
    samples it; writes bench/profile-<workload>.<svg|txt|json>."""
    spy = args.py_spy or shutil.which("py-spy") or str(Path(twistd).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        raise BenchError("py-spy not found: pip install py-spy (into any venv) and pass "
                         "--py-spy PATH")
    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    out = HERE / f"profile-{args.profile}.{ext}"
    sq = Sharqd(twistd, env, tmp, rs.port, 1, args.job_expire_ms, "profile")
    spy_proc = None
    try:
        pf = 0 if args.profile == "enqueue" else 30000 + 2000 * args.duration
        measure_run(rs, sq, wrk_bin, args.profile, 32, 2, "pwarm", pf, scripts)
        r = rs.client
        r.call("FLUSHALL")
        if pf:
            prefill(r, scripts, pf, "prof")
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(sq.proc.pid), "--subprocesses", "--gil", "--rate", "250",
             "--duration", str(args.duration + 1), "--format", args.profile_format,
             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        w = run_wrk(wrk_bin, sq.url, args.profile, 32, args.duration,
                    [QTYPE, str(NQUEUES), "prof"])
        spy_out, _ = spy_proc.communicate(timeout=args.duration + 60)
        if spy_proc.returncode != 0:
            raise BenchError(f"py-spy failed: {spy_out[-800:]}")
    finally:
        if spy_proc is not None and spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
        sq.stop()
    secs = w["duration_us"] / 1e6
    lines = [f"# sharqd profile: {LABEL[args.profile]}, 32 connections, {args.duration} s",
             "", f"{w['requests'] / secs:,.0f} req/s under py-spy (sampling slows it "
             f"down); p99 {w['p99_us'] / 1000:.1f} ms.  Output: {out}", ""]
    if args.profile_format == "raw":
        self_t, incl, total = {}, {}, 0
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            n = int(n)
            total += n
            frames = stack.split(";")
            self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
        for title, table in (("self", self_t), ("inclusive", incl)):
            lines += [f"Top 20 frames by {title} samples ({total} samples)", "",
                      "| % | samples | frame |", "|---:|---:|---|"]
            for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:20]:
                lines.append(f"| {100 * n / max(total, 1):.1f} | {n} | `{f[:160]}` |")
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- setup

def ensure_tools():
    need = {"wrk": "wrk", "redis-server": "redis-server",
            "redis-benchmark": "redis-tools"}
    missing = [b for b in need if not shutil.which(b)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({need[b] for b in missing})
        log(f"installing {' '.join(pkgs)} with apt-get")
        subprocess.run(["apt-get", "install", "-y", *pkgs], timeout=600,
                       stdout=subprocess.DEVNULL)
    missing = [b for b in need if not shutil.which(b)]
    if missing:
        raise BenchError(f"missing binaries: {', '.join(missing)}")
    return {b: shutil.which(b) for b in need}


def find_twistd(given):
    cands = [given, os.environ.get("TWISTD"),
             str(Path(sys.executable).parent / "twistd"),
             os.environ.get("VIRTUAL_ENV") and str(Path(os.environ["VIRTUAL_ENV"]) / "bin/twistd"),
             shutil.which("twistd")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise BenchError("no twistd found: pass --twistd PATH (a venv with sharqd's deps)")


def twistd_python(twistd):
    try:
        first = Path(twistd).read_bytes()[:200].split(b"\n")[0]
    except OSError:
        return None
    if first.startswith(b"#!"):
        return first[2:].decode().strip().split()[0]
    return None


def machine_meta(rs, twistd, env, args, wrk_bin):
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk_v = subprocess.run([wrk_bin, "--version"], capture_output=True, text=True)
    wrk_v = (wrk_v.stdout + wrk_v.stderr).split("Copyright")[0].strip()
    git = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                            "--untracked-files=no", "--", "sharqd"],
                           capture_output=True, text=True).stdout.strip()
    py = twistd_python(twistd)
    where = "?"
    if py:
        probe = subprocess.run(
            [py, "-c", "import sys, sharqd; print(sharqd.__file__, sharqd.__version__, "
                       "sys.version.split()[0])"],
            capture_output=True, text=True, env=env, cwd="/")
        where = probe.stdout.strip() or probe.stderr.strip()[-200:]
    return [
        ("Date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("Machine", f"nproc {os.cpu_count()}, {model}, Linux {platform.release()}"),
        ("Redis", f"{rs.version()} (own redis-server on a free port, no persistence)"),
        ("wrk", f"{wrk_v}, -t2, {args.duration} s per run, {args.runs} runs at 32 "
                f"connections, {args.runs64} at 64 (+ an uncounted 2 s warm-up per "
                "workload)"),
        ("sharqd", f"`{in_repo(twistd)} -n --pidfile= sharq -c CONF`; sharqd module: "
                   f"{in_repo(where)}; tree at {git}"
                   f"{' (uncommitted changes in sharqd/)' if dirty else ''}"),
        ("Config", f"job_expire_interval {args.job_expire_ms}, job_requeue_interval 1000, "
                   f"key_prefix {PREFIX}; queue type `{QTYPE}`, {NQUEUES} queues, "
                   "interval 0; dequeue workloads are pre-filled straight in Redis "
                   "with the enqueue script"),
        ("Note", f"wrk, sharqd and Redis share the machine's {os.cpu_count()} cores; "
                 "other processes' CPU during each run is in the all-runs table"),
    ]


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
