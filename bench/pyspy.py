"""
`bench/run.py --profile WORKLOAD`: one workload against sharqd (workers 1)
while py-spy samples it.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

from common import HERE, LABEL, NQUEUES, QTYPE, BenchError
from luascripts import prefill
from servers import Sharqd
from wrk import measure_run, run_wrk


def profile(rs, scripts, twistd, env, tmp, wrk_bin, args):
    """One workload (32 connections) against sharqd (workers 1) while py-spy
    samples it; writes bench/profile-<workload>.<svg|txt|json>."""
    spy = args.py_spy or shutil.which("py-spy") or str(Path(twistd).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        raise BenchError("py-spy not found: pip install py-spy (into any venv) and pass "
                         "--py-spy PATH")
    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    out = HERE / f"profile-{args.profile}.{ext}"
    sq = Sharqd(twistd, env, tmp, rs.port, 1, args.job_expire_ms, "profile",
                source_tree=not args.installed)
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
