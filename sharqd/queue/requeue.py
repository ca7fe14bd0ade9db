"""
The periodic requeue pass: expired active jobs go back to the front of their
queues.  Runs in bounded batches under a Redis lock shared by every sharqd
process on the same Redis.
"""

import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable

BATCH = 100  # jobs per script call: keeps each Redis call to about 2 ms


class RequeueService(Service):
    log = Logger()

    def __init__(self, queue, interval_ms, clock, batch=BATCH):
        self.queue = queue
        self.interval = interval_ms / 1000.0
        self.clock = clock
        self.batch = batch
        self.token = os.urandom(16).hex().encode()
        # the holder renews the lock every pass and between batches, so a
        # few intervals are enough; a crashed holder is replaced that fast
        self.lock_ttl_ms = max(1000, 3 * interval_ms)
        self._loop = None
        self._running = None
        self.failing = False  # passes fail: said once, quiet until one works

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    async def _stop(self):
        if self._loop.running:
            self._loop.stop()
        if self._running is not None:
            await self._running
        try:
            await self.queue.unlock(self.token)
        except Exception:
            pass  # Redis may be gone already; the lock expires by itself

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    def tick(self):
        """One pass, skipped while the previous one is still running."""
        if self._running is not None:
            return None
        self._running = Deferred.fromCoroutine(self.run_pass())
        self._running.addCallbacks(self._worked, self._failed)
        self._running.addBoth(self._done)
        # the LoopingCall must never see a failure: it would stop for good
        return None

    def _done(self, result):
        self._running = None
        return result

    def _worked(self, result):
        if self.failing:
            self.failing = False
            self.log.info("Requeue passes work again")
        return result

    def _failed(self, failure):
        # one line when passes start failing, not one per pass: a Redis
        # outage would fill the log every interval
        if self.failing:
            return
        self.failing = True
        if failure.check(RedisUnavailable):
            self.log.warn("Requeue pass failed: {error}; retrying every {interval} s "
                          "until Redis is back", error=failure.getErrorMessage(),
                          interval=self.interval)
        else:
            self.log.failure("Requeue pass failed; retrying every {interval} s",
                             failure, interval=self.interval)

    async def run_pass(self):
        """Requeue every expired job, if this process holds the lock."""
        if not await self.queue.lock(self.token, self.lock_ttl_ms):
            return 0
        total = 0
        for queue_type in await self.queue.queue_types():
            while True:
                requeued, discarded, seen = await self.queue.requeue(queue_type, self.batch)
                total += seen
                if discarded:
                    self.log.info("Moved {n} jobs of {queue_type} whose requeue "
                                  "limit was spent to the dead letters",
                                  n=discarded, queue_type=queue_type)
                if seen < self.batch:
                    break
                # a long pass renews the lock; if it lapsed meanwhile,
                # another process may be passing now: leave it to that one
                if not await self.queue.lock(self.token, self.lock_ttl_ms):
                    return total
        return total
