"""
The Redis side alone: each queue script's rate under redis-benchmark at
the wrk runs' concurrency, and the Redis time of the dequeue script with
1, 1,000 and 100,000 ready queues (SLOWLOG).
"""

import statistics
import subprocess
import time

from common import BASE, NQUEUES, PREFIX, BenchError, log
from luascripts import check_replies, prefill, scan_keys


def redis_benchmark(binary, port, conns, n, rand, args, timeout):
    cmd = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(conns), "-n", str(n),
           "--csv", *(["-r", str(rand)] if rand else []), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    rows = [l for l in proc.stdout.splitlines() if l.startswith(('"EVALSHA', '"FCALL'))]
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


def dequeue_scaling(rs, scripts, sizes, k):
    """Redis time of the dequeue script with N ready queues.  Each size gets
    its own queue type holding N queues with one ready job each; then k rounds
    visit every size in turn (so that load from elsewhere hits all sizes
    alike): dequeue, finish that job, enqueue a new one into the same queue
    (N stays ready).  The dequeue times are SLOWLOG entries
    (slowlog-log-slower-than 0)."""
    r = rs.client
    out = []
    dsha = scripts.name["dequeue"].encode()
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
    """Move (queue type, us) of the entries calling <sha> (FCALL of that
    function, or EVALSHA of that sha) out of SLOWLOG (which
    also logs every redis.call inside the scripts, hence the small batches)."""
    n = r.call("SLOWLOG", "LEN")
    if n:
        entries = r.call("SLOWLOG", "GET", n)
        r.call("SLOWLOG", "RESET")
        if n >= 20000:
            raise BenchError("scaling: SLOWLOG overflowed")
        # args: FCALL function (or EVALSHA sha) 0 base prefix type now ...
        into.extend((e[3][5], e[2]) for e in entries
                    if len(e[3]) > 5 and e[3][0].upper() in (b"FCALL", b"EVALSHA")
                    and e[3][1] == sha)
