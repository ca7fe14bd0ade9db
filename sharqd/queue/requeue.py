"""
The periodic requeue pass: expired active jobs go back to the front of their
queues.  A pass costs what is due, not what is registered: it reads, from
an index kept by sharqd (lua/due.lua, a slot of its own), the types whose
earliest deadline has come, and requeues those only.  Each queue type has
its own lock in its own hash slot, so that two sharqd processes never
requeue one type at once while different types (on different cluster
nodes) are passed by whoever holds them.  Within a pass the types take
turns, one bounded batch each, so a type with many expired jobs does not
hold up the others.

The index holds, per type, a bound: no active job of the type ends before
it.  A script that sets a deadline below the type's bound (set_deadline in
common.lua: a dequeue into a type with no active job, a touch with a
shorter lease) says so in its reply, and sharqd marks it (ZADD LT, and a
new generation for the type) before answering.  A pass reads the due
types with their generations, requeues them, and settles each with the
earliest deadline its last requeue call saw (or drops it), only if its
generation is unchanged.  The orderings of a pass P and a dequeue D that
lowers the bound of type T (tests/test_requeue.py drives each):

- D's script and mark before P reads T: P's requeue sees D's deadline, so
  the bound P settles is at most that deadline.
- D's script before P's requeue call, its mark after P's read: the mark
  changed the generation before P settles (P leaves the old, due bound:
  the next pass looks again), or comes after the settle (ZADD LT lowers
  the bound P set to at most D's deadline, which P's call saw anyway).
- D's script after P's requeue call: P's bound may not know D's deadline,
  but D's mark either changed the generation (no settle) or lowers the
  bound after the settle.
- A deadline that was not below the bound needs no mark: the bound (as
  the type's slot knows it, P:{T}:indexed) is at most the earliest
  deadline a requeue call saw, and every later deadline that was lower
  was marked.
- Two passes of T (a lock that lapsed in a long pass): with no mark
  between them, the later requeue call's earliest deadline is at least
  the earlier one's, so whichever settle lands last leaves a bound at
  most every deadline.  Generations come from one counter: a type dropped
  and marked again never shows a generation a pass read before.

sharqd can die between a script and its mark (and an older sharqd writes
no marks): when the service starts, and when passes work again after
failing, it checks every registered type, and each pass checks a page of
the registry (a ZSCAN cursor) so that every type is checked within about
SWEEP_SECONDS; a type whose earliest deadline is below its bound (or has
none) is marked.  A dequeue or touch that failed (its script may have run,
its reply lost with its connection) has its type checked by the next pass.
The same pages drop types idle for long from the registry.
"""

import math
import os
import zlib

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sharqd.errors import RedisUnavailable
from sharqd.queue.operations import DUE_STEP

BATCH = 100  # jobs per script call: keeps each Redis call to about 2 ms
AT_ONCE = 16  # script calls of one pass in flight together
SWEEP_AT_ONCE = 64  # commands of a sweep in flight together (plain reads)
SWEEP_SECONDS = 60  # every registered type is checked about this often
# the sweep also drops idle types from the registry, each type every this
# many rounds (a script call for each type not registered for long: not
# worth doing every minute, as a type stays 15 minutes anyway); a fifth of
# each page, so that every minute costs the same
FORGET_ROUNDS = 5


async def _each(function, items, at_once=AT_ONCE):
    """function(item) (a coroutine or a Deferred) for every item, at_once
    at a time; results in order."""
    results = []
    for i in range(0, len(items), at_once):
        results += await gatherResults([ensureDeferred(function(item))
                                        for item in items[i:i + at_once]],
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
        self.held = {}  # type whose lock this process took -> when (clock s)
        self.passes = 0
        self.swept = False  # every registered type checked since the start
        self.cursor = b"0"  # of the registry's pages
        self.rounds = 0  # of the registry by the sweep
        self.owed = 0.0  # types the sweep is behind its pace
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
            # while Redis was away, a dequeue's reply may have been lost
            # after its script ran, here or in another process: check all
            self.swept = False
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
            self.held[queue_type] = self.clock.seconds()
            return True
        self.held.pop(queue_type, None)
        return False

    def _forget_lapsed_locks(self):
        """Locks not renewed for their ttl have expired in Redis."""
        oldest = self.clock.seconds() - self.lock_ttl_ms / 1000.0
        for queue_type in [t for t, at in self.held.items() if at < oldest]:
            del self.held[queue_type]

    async def _requeue(self, queue_type):
        requeued, discarded, seen, head = await self.queue.requeue_batch(
            queue_type, self.batch)
        if discarded:
            self.log.info("Moved {n} jobs of {queue_type} whose requeue "
                          "limit was spent to the dead letters",
                          n=discarded, queue_type=queue_type)
        return seen, head

    async def run_pass(self):
        """Requeue every expired job of the due types whose lock this
        process holds (or takes), then check a page of the registry;
        returns how many jobs were examined."""
        if not self.swept:
            await self.sweep(await self.queue.registered_types())
            # the set of earlier versions is read here only: its idle
            # types leave it here (the registry's, in the sweep's pages)
            legacy = await self.queue.legacy_types()
            if legacy:
                await _each(self.queue.forget_if_idle, legacy)
            self.swept = True
        unsure = self.queue.unsure_types()
        try:
            await self.sweep(unsure)
        except Exception:
            self.queue.still_unsure(unsure)
            raise
        total = await self.requeue_due()
        await self.sweep_page()
        self._forget_lapsed_locks()
        self.passes += 1
        return total

    async def requeue_due(self):
        """Requeue the due types, one batch per type and turn, and settle
        their bounds in the index; returns how many jobs were examined."""
        generation = dict(await self.queue.due_types())
        due = list(generation)
        locked = await _each(self._lock, due)
        turn = [t for t, mine in zip(due, locked) if mine]
        total, settled = 0, []
        while turn:
            results = await _each(self._requeue, turn)
            more = []
            for queue_type, (seen, head) in zip(turn, results):
                total += seen
                if seen >= self.batch:
                    more.append(queue_type)
                else:
                    settled.append((queue_type, generation[queue_type], head))
            # a long pass renews the locks; a type whose lock lapsed
            # meanwhile may be passed by another process now: leave it
            # (not settled, it stays due)
            locked = await _each(self._lock, more)
            turn = [t for t, mine in zip(more, locked) if mine]
        if settled:
            await self.queue.settle_due(settled)
        return total

    async def sweep(self, types):
        """Mark in the index the earliest deadline of each type whose bound
        is above it or missing; returns how many were."""
        if not types:
            return 0
        heads = await _each(self.queue.earliest_deadline, types, SWEEP_AT_ONCE)
        active = [(t, head) for t, head in zip(types, heads) if head is not None]
        bounds = await self.queue.due_bounds([t for t, _ in active])
        lost = [(t, head) for (t, head), bound in zip(active, bounds)
                if bound is None or bound > head]
        if lost:
            # after an upgrade, or a sharqd that died between a dequeue and
            # its mark (or a deadline that just moved: harmless)
            self.log.info("Requeue index: marked the deadlines of {n} types it did "
                          "not hold ({types})", n=len(lost),
                          types=", ".join(t for t, _ in lost[:5]))
            for i in range(0, len(lost), DUE_STEP):  # each call a few ms at most
                await self.queue.mark_due(lost[i:i + DUE_STEP])
        return len(lost)

    async def sweep_page(self):
        """Check a page of the registry: about interval / SWEEP_SECONDS of
        it per pass, so that every type is checked about every
        SWEEP_SECONDS; a type idle for long leaves the registry (each type
        looked at every FORGET_ROUNDS rounds)."""
        self.owed += await self.queue.registry_size() * self.interval / SWEEP_SECONDS
        if self.owed < 1:
            return
        # a small registry comes whole (ZSCAN of a listpack): the passes
        # after it owe nothing until it is due again
        turn = self.rounds % FORGET_ROUNDS
        self.cursor, page = await self.queue.registry_page(self.cursor,
                                                           math.ceil(self.owed))
        if self.cursor in (b"0", 0):
            self.rounds += 1
        self.owed = min(0.0, self.owed - len(page)) if page else 0.0
        await self.sweep([t for t, _ in page])
        cutoff = self.queue.forget_cutoff()
        old = [(t, score) for t, score in page if score <= cutoff
               and zlib.crc32(t.encode()) % FORGET_ROUNDS == turn]
        await _each(lambda e: self.queue.forget_if_idle(e[0], cutoff, e[1]), old)
