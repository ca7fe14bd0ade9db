"""
The periodic requeue pass: expired active jobs go back to the front of their
queues.  Each queue type has its own lock in its own hash slot, so that two
sharqd processes never requeue one type at once while different types (on
different cluster nodes) are passed by whoever holds them.  Within a pass
the types take turns, one bounded batch each, so a type with many expired
jobs does not hold up the others.
"""

import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable

BATCH = 100  # jobs per script call: keeps each Redis call to about 2 ms
AT_ONCE = 16  # script calls of one pass in flight together


async def _each(function, items):
    """function(item) for every item, AT_ONCE at a time; results in order."""
    results = []
    for i in range(0, len(items), AT_ONCE):
        results += await gatherResults([Deferred.fromCoroutine(function(item))
                                        for item in items[i:i + AT_ONCE]],
                                       consumeErrors=True)
    return results


class RequeueService(Service):
    log = Logger()

    def __init__(self, queue, interval_ms, clock, batch=BATCH):
        self.queue = queue
        self.interval = interval_ms / 1000.0
        self.clock = clock
        self.batch = batch
        self.token = os.urandom(16).hex().encode()
        # the holder renews a lock every pass and between batches, so a
        # few intervals are enough; a crashed holder is replaced that fast
        self.lock_ttl_ms = max(1000, 3 * interval_ms)
        self.held = set()  # types whose lock this process holds
        self.passes = 0
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
        for queue_type in sorted(self.held):
            try:
                await self.queue.unlock(queue_type, self.token)
            except Exception:
                pass  # Redis may be gone already; the lock expires by itself
        self.held.clear()

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
        if failure.check(FirstError):
            failure = failure.value.subFailure
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

    async def _lock(self, queue_type):
        if await self.queue.lock(queue_type, self.token, self.lock_ttl_ms):
            self.held.add(queue_type)
            return True
        self.held.discard(queue_type)
        return False

    async def _requeue(self, queue_type):
        requeued, discarded, seen = await self.queue.requeue(queue_type, self.batch)
        if discarded:
            self.log.info("Moved {n} jobs of {queue_type} whose requeue "
                          "limit was spent to the dead letters",
                          n=discarded, queue_type=queue_type)
        return seen

    async def run_pass(self):
        """Requeue every expired job of the types whose lock this process
        holds (or takes); returns how many jobs were examined."""
        types = await self.queue.registered_types()
        locked = await _each(self._lock, types)
        turn = [t for t, mine in zip(types, locked) if mine]
        total = 0
        while turn:
            seen = await _each(self._requeue, turn)
            total += sum(seen)
            more = [t for t, n in zip(turn, seen) if n >= self.batch]
            # a long pass renews the locks; a type whose lock lapsed
            # meanwhile may be passed by another process now: leave it
            locked = await _each(self._lock, more)
            turn = [t for t, mine in zip(more, locked) if mine]
        self.passes += 1
        if self.passes % 60 == 1:
            await _each(self.queue.forget_if_idle, types)
        return total
