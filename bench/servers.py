"""
The processes of the wrk bench and their CPU time: its redis-server and
sharqd (started with the harness the tests use, tests/processes.py), and
the machine's busy time, to tell how much of it other processes took.
"""

import time

import processes
from common import PREFIX, BenchError, log
from processes import CLK_TCK, free_port, process_tree
from resp import Redis


def machine_busy_ticks():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals[:8]) - idle


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
    """sharqd with `workers` (`twistd -n --pidfile= sharq -c CONF`, in its
    own process group) and the CPU time of its process tree."""

    def __init__(self, twistd, env, tmp, redis_port, workers, expire_ms, tag,
                 source_tree=True):
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = tmp / f"sharqd-{tag}.ini"
        conf.write_text(processes.sharq_conf(
            self.port, redis_port, PREFIX,
            sharq=f"job_expire_interval : {expire_ms}\njob_requeue_interval : 1000",
            server=f"workers : {workers}"))
        self.launcher = processes.SharqdProcess(
            [twistd], str(conf), str(tmp / f"sharqd-{tag}.log"), str(tmp), env=env,
            source_tree=source_tree)
        self.proc = self.launcher.start().process
        try:
            self.launcher.wait_answering(self.port)
            # every worker listening, not only the first
            processes.wait_for(lambda: self.launcher.read_log().count(
                "sharqd listening on") >= workers, timeout=30, step=0.2)
        except (RuntimeError, AssertionError) as e:
            self.stop()
            raise BenchError(f"sharqd did not start: {e}\n{self.log_tail()}") from None
        self.nprocs = len(process_tree(self.proc.pid))

    def log_tail(self, n=15):
        try:
            return "\n".join(self.launcher.read_log().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self):
        return self.proc.poll() is None

    def cpu_s(self):
        """(CPU seconds of the process tree, number of processes)"""
        return processes.tree_cpu_seconds(self.proc.pid)

    def stop(self):
        stop_group(self.proc, "sharqd")
        self.launcher.log.close()
