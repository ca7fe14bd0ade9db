"""
Lua scripts, called as Redis functions (FCALL) where Redis has them, else
with EVALSHA, falling back to EVAL when Redis has not seen a script
(NOSCRIPT: a restarted or flushed Redis, a promoted replica).
"""

import hashlib

import txredisapi
from twisted.internet.defer import FirstError, gatherResults
from twisted.logger import Logger


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


class Library:
    """
    A Redis function library (FUNCTION LOAD, Redis >= 7.0): its name, its
    text, and per script the name of its function and the Script that
    does the same with EVAL.
    """

    def __init__(self, name, code, functions, scripts):
        self.name = name
        self.code = code
        self.functions = {script: fn.encode() for script, fn in functions.items()}
        self.scripts = scripts


def _error(failure):
    """The text of a Redis error reply, or None for any other failure."""
    if isinstance(failure.value, txredisapi.ResponseError):
        return str(failure.value)
    return None


def _denied(text):
    """Why this Redis cannot serve the library's functions at all (too
    old, or an ACL without FUNCTION or FCALL), or None."""
    if text is None:
        return None
    lowered = text.lower()
    if "unknown command" in lowered and ("fcall" in lowered or "function" in lowered):
        return "it has no FUNCTION and FCALL commands (Redis before 7.0)"
    if text.startswith("NOPERM") and ("fcall" in lowered or "function" in lowered):
        return f"its ACL user may not use them ({text})"
    return None


class Functions:
    """
    How one sharqd process calls a Library's scripts on its Redis (every
    master of a cluster).  FCALL while the library is there; where Redis
    answers "Function not found" (a restarted Redis without persistence,
    FUNCTION FLUSH, a new cluster node), that call goes by EVALSHA/EVAL,
    as it did not run, and the library is loaded again on every master.
    A Redis without functions (6.2), an ACL that denies FCALL or FUNCTION
    LOAD, or a FUNCTION LOAD refused for good sends the process to EVALSHA
    for good, said once in the log.

    masters() gives an execute per master (FUNCTION LOAD goes to each).
    """

    log = Logger()

    def __init__(self, library, masters):
        self.library = library
        self.masters = masters
        self.fcall = True   # False once this Redis is known not to serve them
        self.loading = None  # the Deferred of a load in flight

    def __call__(self, name, execute, keys, args):
        """Deferred of the reply of script name, run once."""
        if not self.fcall or self.loading is not None:
            return self.library.scripts[name](execute, keys, args)
        d = execute(b"FCALL", self.library.functions[name], len(keys), *keys, *args)
        d.addErrback(self._instead, name, execute, keys, args)
        return d

    def _instead(self, failure, name, execute, keys, args):
        # both errors come before the function runs: running the script
        # instead runs it once
        text = _error(failure)
        reason = _denied(text)
        if reason is not None:
            self._give_up(reason)
        elif text is not None and text.startswith("ERR Function not found"):
            self.load()
        else:
            return failure
        return self.library.scripts[name](execute, keys, args)

    def load(self):
        """Load the library on every master (again); a Deferred that fires
        once done.  One load at a time."""
        if self.loading is None and self.fcall:
            self.loading = gatherResults(
                [self._load_on(execute) for execute in self.masters()], consumeErrors=True)
            self.loading.addBoth(self._loaded)
        return self.loading

    def _load_on(self, execute):
        d = execute(b"FUNCTION", b"LOAD", self.library.code)
        return d.addErrback(self._load_failed)

    def _load_failed(self, failure):
        text = _error(failure)
        if text is None:  # no answer, or a transient refusal: the next miss tries again
            return failure
        if "already exists" in text:
            return None  # another process (or an earlier load) was first
        # denied, or refused for good (the library does not compile there):
        # loading it again on every call would only add to each call's cost
        self._give_up(_denied(text) or f"FUNCTION LOAD failed: {text}")
        return None

    def _loaded(self, result):
        self.loading = None
        if isinstance(result, list) and self.fcall:
            self.log.info("Redis function library {name} loaded", name=self.library.name)
        elif not isinstance(result, list):
            # Redis went away meanwhile: calls go by EVALSHA, the next
            # "Function not found" loads it again
            if isinstance(result.value, FirstError):
                result = result.value.subFailure
            self.log.warn("Could not load the Redis function library {name}: {error}",
                          name=self.library.name, error=result.getErrorMessage())

    def _give_up(self, reason):
        if self.fcall:
            self.fcall = False
            self.log.warn("Redis functions not used: {reason}; the queue scripts run "
                          "with EVALSHA (README, Requirements)", reason=reason)
