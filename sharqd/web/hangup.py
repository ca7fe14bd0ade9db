"""
The one owner of SIGHUP in a sharqd process: while it runs, SIGHUP calls
each of its listeners (reopen the access log, relay the signal to the
worker processes) in the reactor thread; when it stops, the handler that
was there before is back.
"""

import signal

from twisted.application.service import Service
from twisted.logger import Logger


class HangupService(Service):
    log = Logger()

    def __init__(self, reactor):
        self.reactor = reactor
        self.listeners = []
        self._previous = None

    def add(self, listener):
        """Call listener() on each SIGHUP."""
        self.listeners.append(listener)

    def startService(self):
        super().startService()
        previous = signal.signal(signal.SIGHUP, self._received)
        # None: a handler installed outside Python, which cannot be put back
        self._previous = signal.SIG_DFL if previous is None else previous

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _received(self, signum, frame):
        # a signal handler may run between any two bytecodes: do the work
        # in the reactor's own turn
        self.reactor.callFromThread(self.hangup)

    def hangup(self):
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                self.log.failure("SIGHUP: {listener} failed", listener=listener)
