"""
The wrk driver: one wrk run of a workload (bench/*.lua) against sharqd with
the CPU time sharqd, Redis, wrk and the rest of the machine used meanwhile,
and the runs of every workload at workers 1 and 2.
"""

import json
import resource
import subprocess

from common import HERE, LABEL, NQUEUES, QTYPE, WORKLOADS, BenchError, log
from luascripts import prefill
from servers import Sharqd, machine_busy_ticks, wait_quiet
from processes import CLK_TCK


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
                        f"w{workers}", source_tree=not args.installed)
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
                                        args.job_expire_ms, f"w{workers}-{restarts}",
                                        source_tree=not args.installed)
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
