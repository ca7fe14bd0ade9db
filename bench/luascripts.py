"""
sharqd's queue scripts called straight on Redis, as sharqd calls them
(FCALL of its function library, loaded here; or, as on Redis 6.2, EVALSHA
of script_text: what the op uses of common.lua, then the op, the SHA
checked), and a pipelined prefill of ready jobs: for the raw rates and the
dequeue scaling of the wrk bench, and the memory figures of
bench/sidebyside.py.
"""

import hashlib
import sys
import time

from common import NQUEUES, PREFIX, QTYPE, ROOT, BenchError
from resp import RespError

sys.path.insert(0, str(ROOT))
from sharqd.queue.lua import library, script_text  # noqa: E402  (stdlib only)


class Scripts:
    """The queue scripts as sharqd calls them: FCALL of the function
    library (sharqd/queue/lua library()), or with evalsha=True EVALSHA of
    each script's text (script_text), sharqd's way on Redis 6.2.
    command(op, head, *args) is one call of op; name[op] what it calls."""

    def __init__(self, redis, evalsha=False):
        self.name = {}
        if evalsha:
            self.verb = "EVALSHA"
            for op in ("enqueue", "dequeue", "finish"):
                text = script_text(op)
                sha = redis.call("SCRIPT", "LOAD", text).decode()
                if sha != hashlib.sha1(text).hexdigest():
                    raise BenchError(f"SCRIPT LOAD sha of {op} differs from sha1 of its text")
                self.name[op] = sha
            return
        self.verb = "FCALL"
        name, code, functions = library()
        try:
            redis.call("FUNCTION", "LOAD", code)
        except RespError as e:
            if "already exists" not in str(e):
                raise
        self.name = functions

    def command(self, op, head, *args):
        return [self.verb, self.name[op], 0, *head, *args]

    @staticmethod
    def head(qtype):
        """ARGV[1..4]: base "<prefix>:{<type>}", prefix, type, now ("": Redis clock)."""
        return [f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, ""]

    def enqueue_cmd(self, qid, jid, payload=b'{"n":1}', qtype=QTYPE):
        return self.command("enqueue", self.head(qtype), qid, jid, 0, payload, -1, "")

    def dequeue_cmd(self, lease=1000, qtype=QTYPE):
        return self.command("dequeue", self.head(qtype), lease)

    def finish_cmd(self, qid, jid, qtype=QTYPE):
        return self.command("finish", self.head(qtype), qid, jid)


def check_replies(replies, what):
    bad = [r for r in replies if isinstance(r, RespError)]
    if bad:
        raise BenchError(f"{what}: {len(bad)} errors, first: {bad[0]}")


def prefill(redis, scripts, n, tag, queues=NQUEUES):
    """n ready jobs (interval 0) spread over `queues` queues."""
    t = time.monotonic()
    cmds = [scripts.enqueue_cmd(f"q{i % queues}", f"{tag}-{i}", b'{"n":%d}' % i)
            for i in range(n)]
    replies = redis.pipeline(cmds)
    check_replies(replies, "prefill")
    created = sum(1 for r in replies if r and r[0] == 201)
    if created != n:
        raise BenchError(f"prefill: {created} of {n} jobs created")
    return time.monotonic() - t


def scan_keys(r, pattern):
    keys, cursor = [], b"0"
    for _ in range(100000):
        cursor, batch = r.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        keys.extend(batch)
        if cursor == b"0":
            break
    return keys
