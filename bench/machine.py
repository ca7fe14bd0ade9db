"""
What the wrk bench needs and where it runs: the binaries (installed with
apt-get when missing), the twistd to run, and the machine, Redis, wrk and
sharqd versions written at the top of the results.
"""

import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from common import NQUEUES, PREFIX, QTYPE, ROOT, BenchError, in_repo, log


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
