"""
The upgrade of the Redis layout at startup.  Layout 2 keeps a queue in three
keys and a stream per type where layout 1 had six keys per queue and one
more per queue and minute (docs/redis-layout.md); a Redis holding jobs in
the old layout keeps them: before the queue operations run, the parent
process moves every queue of every known type (migrate.lua, one atomic
script call per queue) and marks each type done, so a later start costs
one HGET per type.  Until then the operations wait (LayoutGate), and answer
503 if it takes longer than a request may wait: a Redis that is down at
startup is upgraded as soon as it is back.  Worker processes do not
upgrade: they wait for the parent's mark.
"""

import time

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable

RETRY_SECONDS = 1.0  # between attempts while Redis cannot be reached
MARK_POLL_SECONDS = 0.2  # a worker's look for the parent's mark
UPGRADING = ("sharqd is upgrading the Redis layout (README, Upgrading); "
             "try again shortly.")


class LayoutGate:
    """queue.gate while the layout is not known to be today's: a queue
    operation waits for open(), at most wait_seconds, then fails with 503."""

    def __init__(self, queue, reactor, wait_seconds):
        self.queue = queue
        self.reactor = reactor
        self.wait_seconds = wait_seconds
        self.waiting = []
        queue.gate = self

    def __call__(self, call):
        d = Deferred()
        timer = self.reactor.callLater(self.wait_seconds, self._too_long, d)
        self.waiting.append((d, timer))
        return d.addCallback(lambda _: call())

    def _too_long(self, d):
        self.waiting = [(w, t) for w, t in self.waiting if w is not d]
        d.errback(RedisUnavailable(UPGRADING))

    def open(self):
        self.queue.gate = None
        waiting, self.waiting = self.waiting, []
        for d, timer in waiting:
            timer.cancel()
            d.callback(None)


class _Retrying(Service):
    """Tries step() until it is done, every retry_seconds, then opens the gate."""

    log = Logger()
    retry_seconds = RETRY_SECONDS

    def __init__(self, queue, reactor, wait_seconds):
        self.queue = queue
        self.reactor = reactor
        self.gate = LayoutGate(queue, reactor, wait_seconds)
        self._retry = None
        self._failing = False

    def startService(self):
        super().startService()
        self._attempt()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def _attempt(self):
        self._retry = None
        if self.running:
            Deferred.fromCoroutine(self.step()).addCallbacks(self._worked, self._failed)

    def _worked(self, finished):
        if not finished:
            return self._again()
        self.gate.open()

    def _failed(self, failure):
        if not self._failing:
            self._failing = True
            self.log.warn("Redis layout check failed ({error}); trying again every "
                          "{s} s", error=failure.getErrorMessage(), s=self.retry_seconds)
        self._again()

    def _again(self):
        if self.running:
            self._retry = self.reactor.callLater(self.retry_seconds, self._attempt)


class MigrationService(_Retrying):
    """The parent process: moves the old layout's queues, then marks it."""

    async def step(self):
        started = time.monotonic()
        types = await self.queue.types_to_upgrade()
        moved = 0
        for queue_type in types:
            moved += await self.queue.upgrade_type(queue_type)
        await self.queue.mark_layout()
        if moved:
            self.log.info("Redis layout upgraded: {moved} queues of {types} types moved "
                          "in {s:.1f} s", moved=moved, types=len(types),
                          s=time.monotonic() - started)
        return True


class LayoutWait(_Retrying):
    """A worker process: waits for the parent's mark."""

    retry_seconds = MARK_POLL_SECONDS

    async def step(self):
        return await self.queue.layout_marked()
