"""
Long-poll: requests that wait for a job of a type to become ready.

Knows the queue and is told by a notification source (the subscription to the
ready channels, see channels.py) when a type may have become ready earlier;
no HTTP, no Redis connection here.

Per type and process, dequeue attempts run on behalf of the oldest waiters
(first come, first served): one script call takes jobs for the waiter at the
front and those right behind it with the same lease (up to MAX_GROUP jobs),
and hands them out in order.  One attempt runs at a time while jobs trickle
in; when an attempt comes back with every job it asked for, more are likely
ready, and up to PIPELINE attempts (each for the next group in line) run at
once, so that Redis takes the next group's jobs while this process answers
the last group's clients (a burst of 1,000 jobs for 1,000 waiters).  The
HTTP side holds back the next request of a client it has just answered
until no attempt is in flight (`settled`: the burst is over, or MAX_HOLD
has passed), so that in a burst the next groups' answers go out before the
first groups' new requests are read.  Between attempts the type's waiters sleep until the earliest
ready time the last attempt reported, or a notification, whichever comes
first.  While the notification source is down, and after a failed attempt,
they re-check every `fallback` seconds, so no waiter depends on a
notification that may have been lost.
"""

from collections import OrderedDict

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sharqd.errors import ShuttingDown, TooManyWaiters, TypePaused

FALLBACK_SECONDS = 1.0
MIN_SLEEP = 0.001  # never spin: even a "ready now" answer waits a tick
MAX_GROUP = 100   # jobs one attempt may take for the waiters at the front
PIPELINE = 4      # attempts in flight per type while every one comes back full
MAX_HOLD = 0.25   # seconds settled() holds at most
# settled() fires this long after the burst's last answers: the reactor
# writes them on its next turn, before it resumes reading 1,000 connections
RELEASE_AFTER = 0.001


class _Waiter:
    __slots__ = ("count", "lease", "d", "timeout", "serving", "expired")

    def __init__(self, count, lease):
        self.count = count
        self.lease = lease
        self.d = None
        self.timeout = None
        self.serving = False  # an attempt for this waiter is in flight
        self.expired = False  # its time ran out during that attempt


class _Line:
    """The waiters of one queue type, oldest first."""

    __slots__ = ("queue_type", "waiters", "flying", "started", "hold", "again", "timer",
                 "error", "paused")

    def __init__(self, queue_type):
        self.queue_type = queue_type
        self.waiters = OrderedDict()  # _Waiter -> None
        self.flying = {}      # number of each dequeue attempt in flight -> None, oldest first
        self.started = 0      # attempts started so far (their numbers)
        self.hold = None      # (Deferred, its time limit) of settled() while a burst goes on
        self.again = False    # notified during an attempt: try once more
        self.timer = None     # the next re-check
        self.error = None     # the failure of the last attempt, if it failed
        self.paused = None    # the TypePaused failure while the type is paused


class Waiters(Service):
    log = Logger()

    def __init__(self, queue, clock, fallback=FALLBACK_SECONDS, max_waiters=None):
        self.queue = queue
        self.clock = clock
        self.fallback = fallback
        self.max_waiters = max_waiters  # None: no limit
        self.live = False  # the notification source is subscribed
        self.stopped = False  # sharqd is stopping: nobody waits any more
        self._lines = {}

    def waiting(self, queue_type=None):
        """How many requests wait (for the type, or in all)."""
        if queue_type is not None:
            line = self._lines.get(queue_type)
            return len(line.waiters) if line else 0
        return sum(len(line.waiters) for line in self._lines.values())

    # ---- the API side

    def wait(self, queue_type, count, lease, timeout):
        """
        A Deferred of a list of up to count Jobs, as soon as any is ready;
        [] when none was in timeout seconds (or a failure, when the last
        attempt to dequeue failed).  Cancel it when the client is gone.
        """
        if self.stopped:  # a dequeue without wait, as sharqd stops
            return ensureDeferred(self._once(queue_type, count, lease))
        if self.max_waiters is not None and self.waiting() >= self.max_waiters:
            raise TooManyWaiters(
                f"Too many long-poll requests waiting (max_waiters = "
                f"{self.max_waiters}); try again shortly, or dequeue without wait.")
        line = self._lines.get(queue_type)
        if line is None:
            line = self._lines[queue_type] = _Line(queue_type)
        waiter = _Waiter(count, lease)
        waiter.d = Deferred(lambda d: self._gone(line, waiter))
        waiter.timeout = self.clock.callLater(timeout, self._expire, line, waiter)
        line.waiters[waiter] = None
        # the others (if any) already know nothing is ready until their
        # timer or a notification: the newcomer joins them at the back
        if len(line.waiters) == 1 and not line.flying:
            self._attempt(line)
        return waiter.d

    def settled(self, queue_type):
        """None when no dequeue attempt of the type is in flight, else a
        Deferred that fires once none is (the burst is over), or after
        MAX_HOLD seconds, whichever comes first."""
        line = self._lines.get(queue_type)
        if line is None or not line.flying:
            return None
        if line.hold is None:
            line.hold = (Deferred(), self.clock.callLater(MAX_HOLD, self._release, line))
        return line.hold[0]

    async def _once(self, queue_type, count, lease):
        jobs, _ = await self.queue.dequeue_many(queue_type, count, lease)
        return jobs

    # ---- the notification side

    def notify(self, queue_type):
        """A job of the type may have become ready (earlier)."""
        line = self._lines.get(queue_type)
        if line is None:
            return
        if line.flying:
            line.again = True
        else:
            self._attempt(line)

    def subscribed(self, live):
        """The notification source is up (True) or down (False).  Either
        way every type re-checks now: notifications may have been missed,
        and from now on the re-check period follows `live`."""
        self.live = live
        for line in list(self._lines.values()):
            self.notify(line.queue_type)

    # ---- attempts per type: one at a time, up to PIPELINE in a burst

    def _attempt(self, line):
        """Start an attempt for the oldest waiters no attempt serves yet;
        False when there are none."""
        if line.timer is not None and line.timer.active():
            line.timer.cancel()
        line.timer = None
        if not line.waiters:
            if not line.flying:
                self._drop(line)
            return False
        group, wanted, lease = self._front(line)
        if not group:
            return False
        line.started += 1
        attempt = line.started
        line.flying[attempt] = None
        line.again = False
        d = ensureDeferred(self.queue.dequeue_many(line.queue_type, wanted, lease))
        d.addBoth(self._attempted, line, attempt, group, lease, wanted)
        return True

    def _front(self, line):
        """The oldest waiter not being served, and the ones right behind it
        with the same lease, as far as one script call may take jobs for
        them: (group, jobs wanted, lease)."""
        group, wanted, lease = [], 0, None
        for waiter in line.waiters:
            if waiter.serving:
                continue
            if not group:
                lease = waiter.lease  # None: the default lease
            elif waiter.lease != lease or wanted + waiter.count > MAX_GROUP:
                break
            group.append(waiter)
            wanted += waiter.count
            waiter.serving = True
        return group, wanted, lease

    def _attempted(self, result, line, attempt, group, lease, wanted):
        del line.flying[attempt]
        jobs, next_ms = [], None
        line.paused = None
        if isinstance(result, Failure) and result.check(TypePaused):
            # waiters keep waiting: the resume publishes like an enqueue
            line.error, line.paused = None, result
        elif isinstance(result, Failure):
            if line.error is None:
                self.log.warn("Long-poll dequeue of {queue_type} failed: {error}; "
                              "retrying every {s} s", queue_type=line.queue_type,
                              error=result.getErrorMessage(), s=self.fallback)
            line.error = result
        else:
            line.error = None
            jobs, next_ms = result
        full = len(jobs) == wanted
        if full:  # likely more ready: the next groups' attempts go first, so
            self._more(line)  # Redis takes their jobs while these are answered
        for waiter in group:
            waiter.serving = False
        if jobs:
            self._hand_out(line, group, jobs, lease)
        for waiter in group:
            if waiter.expired and waiter in line.waiters:
                self._answer(line, waiter, [])
        if not line.waiters:
            if not line.flying:
                self._drop(line)
        elif full:
            self._more(line)  # clients that asked meanwhile
        elif line.flying:
            pass  # the last attempt in flight decides what comes next
        elif jobs or line.again:
            self._attempt(line)
        else:
            self._sleep(line, next_ms)
        if not line.flying:
            self._release(line)

    def _more(self, line):
        while len(line.flying) < PIPELINE and self._attempt(line):
            pass

    def _release(self, line):
        """End the hold of settled()."""
        hold, line.hold = line.hold, None
        if hold is not None:
            if hold[1].active():
                hold[1].cancel()
            self.clock.callLater(RELEASE_AFTER, hold[0].callback, None)

    def _hand_out(self, line, group, jobs, lease):
        """Jobs to the group's waiters in order, each up to its count.  Those
        of a client that hung up meanwhile go to the next in line."""
        given = self._give(line, group, jobs, 0, lease)
        if given < len(jobs):
            given = self._give(line, list(line.waiters), jobs, given, lease)
        if given < len(jobs):
            self.log.info("{n} jobs of {queue_type} were taken for clients that "
                          "hung up; they come back when their lease ends",
                          n=len(jobs) - given, queue_type=line.queue_type)

    def _give(self, line, waiters, jobs, given, lease):
        """Answer waiters with jobs from jobs[given:]; how many are given now."""
        for waiter in waiters:
            if given == len(jobs):
                break
            if waiter.lease == lease and waiter in line.waiters:
                self._answer(line, waiter, jobs[given:given + waiter.count])
                given += waiter.count
        return min(given, len(jobs))

    def _sleep(self, line, next_ms):
        delay = None if (self.live and line.error is None) else self.fallback
        if next_ms is not None:
            delay = next_ms / 1000.0 if delay is None else min(delay, next_ms / 1000.0)
        if delay is not None:
            line.timer = self.clock.callLater(max(delay, MIN_SLEEP), self._attempt, line)

    # ---- waiters leave

    def _answer(self, line, waiter, jobs):
        del line.waiters[waiter]
        if waiter.timeout.active():
            waiter.timeout.cancel()
        if jobs:
            waiter.d.callback(jobs)
        elif self.stopped:
            waiter.d.errback(ShuttingDown())
        elif line.error is not None:
            waiter.d.errback(line.error)
        elif line.paused is not None:  # the type is paused: say so
            waiter.d.errback(line.paused)
        else:
            waiter.d.callback([])

    def _expire(self, line, waiter):
        if waiter.serving:
            waiter.expired = True  # answered when the attempt returns
            return
        self._answer(line, waiter, [])
        if not line.waiters and not line.flying:
            self._drop(line)

    def _gone(self, line, waiter):
        """The client hung up (the Deferred was cancelled)."""
        line.waiters.pop(waiter, None)
        if waiter.timeout.active():
            waiter.timeout.cancel()
        if not line.waiters and not line.flying:
            self._drop(line)

    def _drop(self, line):
        if line.timer is not None and line.timer.active():
            line.timer.cancel()
        line.timer = None
        self._release(line)
        if self._lines.get(line.queue_type) is line:
            del self._lines[line.queue_type]

    def stopService(self):
        """Answer every waiter (503 ShuttingDown) so the HTTP side can drain
        at once; a waiter whose dequeue is in flight gets its jobs, if any,
        as soon as that returns."""
        super().stopService()
        self.stopped = True
        for line in list(self._lines.values()):
            for waiter in list(line.waiters):
                if not waiter.serving:
                    self._answer(line, waiter, [])
                else:
                    waiter.expired = True
            if not line.flying:
                self._drop(line)
