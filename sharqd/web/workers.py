"""
`workers = N`: the parent listens and serves, and runs N-1 worker processes
that adopt its listening socket.  A worker that dies is logged and started
again; stopping the parent stops them all.
"""

import json
import os
import sys

from twisted.application.service import Service
from twisted.internet import stdio
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Protocol, ProcessProtocol
from twisted.logger import Logger

from sharqd.logs import WORKER_RECORD

CHILD_FD = 3          # where a worker finds the listening socket
RESTART_DELAY = 1.0   # seconds before a dead worker is started again
STOP_SECONDS = 15     # a worker still running after this is killed


def _json_record(text):
    """A worker's JSON log line as a dict, or None for a text line."""
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class _Worker(ProcessProtocol):
    log = Logger()

    def __init__(self, pool, number):
        self.pool = pool
        self.number = number
        self.ended = Deferred()
        self._partial = b""

    def outReceived(self, data):
        # relay the worker's log lines into ours, so there is one log
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            text = line.decode("utf-8", "replace")
            record = _json_record(text)
            if record is not None:  # log_format = json: pass it on as it is
                self.log.info("[worker {n}] {line}", n=self.number, line=text,
                              **{WORKER_RECORD: record})
            else:
                self.log.info("[worker {n}] {line}", n=self.number, line=text)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool(Service):
    log = Logger()

    def __init__(self, count, config_args, http_service, reactor, metrics_dir=None):
        """config_args: the plugin's config options (-c FILE, and any
        --gunicorn-config FILE), which each worker reads again; metrics_dir:
        where each worker serves its own metrics (see web/prometheus.py)."""
        self.count = count
        self.config_args = list(config_args)
        self.metrics_dir = metrics_dir
        self.http = http_service
        self.reactor = reactor
        self.workers = {}
        self.stopping = False

    def startService(self):
        super().startService()
        for number in range(2, self.count + 1):
            self.spawn(number)

    def spawn(self, number):
        worker = _Worker(self, number)
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=",
                "--logfile=-", "sharq", *self.config_args,
                "--adopt-fd", str(CHILD_FD), "--worker", str(number)]
        if self.metrics_dir is not None:
            args += ["--metrics-dir", self.metrics_dir]
        self.reactor.spawnProcess(
            worker, sys.executable, args, env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r", CHILD_FD: self.http.port.fileno()})
        self.workers[number] = worker

    def ended(self, worker, reason):
        del self.workers[worker.number]
        if self.stopping:
            return
        self.log.error("Worker {n} died ({reason}); starting it again in {d} s",
                       n=worker.number, reason=reason.getErrorMessage(),
                       d=RESTART_DELAY)
        self.reactor.callLater(RESTART_DELAY, self._respawn, worker.number)

    def _respawn(self, number):
        if not self.stopping and number not in self.workers:
            self.spawn(number)

    def _signal_all(self, signum):
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(signum)
            except Exception:
                pass  # already gone

    def relay_hangup(self):
        """SIGHUP to every worker: each reopens its own access log."""
        self._signal_all("HUP")

    async def _stop(self):
        self.stopping = True
        ended = DeferredList([w.ended for w in self.workers.values()])
        self._signal_all("TERM")
        timer = self.reactor.callLater(STOP_SECONDS, self._signal_all, "KILL")
        await ended
        if timer.active():
            timer.cancel()

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class _ParentPipe(Protocol):
    def __init__(self, gone):
        self.gone = gone

    def connectionLost(self, reason):
        self.gone()


class ParentWatch(Service):
    """
    In a worker process: stop when the parent is gone.  The parent holds
    the other end of the worker's stdin (see WorkerPool.spawn), so its end,
    even by SIGKILL, closes that pipe; without this a worker would go on
    serving the adopted socket with nobody to stop or restart it.
    """

    log = Logger()

    def __init__(self, reactor):
        self.reactor = reactor
        self._devnull = None

    def startService(self):
        super().startService()
        # stdout is the log pipe to the parent: StandardIO only reads stdin
        # here and gets /dev/null to (not) write to
        self._devnull = os.open(os.devnull, os.O_WRONLY)
        stdio.StandardIO(_ParentPipe(self._gone), stdin=0, stdout=self._devnull,
                         reactor=self.reactor)

    def _gone(self):
        if self.running:
            self.log.warn("The parent sharqd is gone; this worker stops too")
            self.reactor.stop()
