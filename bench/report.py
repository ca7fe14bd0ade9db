"""
The markdown of bench/RESULTS.md written by the wrk bench: the machine,
the floors, the medians per workload beside the raw script rates, the
dequeue scaling and every run.
"""

import os
import statistics

from common import LABEL, WORKLOADS


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

    L.append("## Raw Lua script rate (redis-benchmark, FCALL of the function library, as "
             "sharqd calls it)\n")
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
             "N queues stay ready.  Redis time of each dequeue FCALL from SLOWLOG "
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
