"""
Deferred helpers of the queue layer, also used by the web layer above it.
"""

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.python.failure import Failure


async def gather(deferreds):
    """Their results in order, or the first failure itself (503, ...)."""
    try:
        return await gatherResults(deferreds, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


class SharedRead:
    """read(*args), a coroutine function, run once for all the callers
    that come while it runs: they share its result (or its failure), so
    several scrapers and open dashboards cost one read, not one each."""

    def __init__(self, read):
        self._read = read
        self._waiters = []

    def __call__(self, *args):
        waiter = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._read(*args)).addBoth(self._done)
        return waiter

    def _done(self, result):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
