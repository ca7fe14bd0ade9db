"""
Lua scripts run with EVALSHA, falling back to EVAL when Redis has not seen
them (NOSCRIPT: a restarted or flushed Redis, a promoted replica).
"""

import hashlib


class Script:
    """One Lua script; call it with an execute(*command) -> Deferred."""

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source).hexdigest().encode()

    def __call__(self, execute, keys, args):
        d = execute(b"EVALSHA", self.sha, len(keys), *keys, *args)
        d.addErrback(self._eval_if_unknown, execute, keys, args)
        return d

    def _eval_if_unknown(self, failure, execute, keys, args):
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return execute(b"EVAL", self.source, len(keys), *keys, *args)
