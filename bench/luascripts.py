"""
sharqd's queue scripts called straight on Redis, as sharqd sends them
(script_text: what the op uses of common.lua, then the op; the SHA
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
from sharqd.queue.lua import script_text  # noqa: E402  (stdlib only)


class Scripts:
    """The queue scripts as sharqd sends them (script_text: what the op
    uses of common.lua, then the op)."""

    def __init__(self, redis):
        self.sha = {}
        for op in ("enqueue", "dequeue", "finish"):
            text = script_text(op)
            sha = redis.call("SCRIPT", "LOAD", text).decode()
            if sha != hashlib.sha1(text).hexdigest():
                raise BenchError(f"SCRIPT LOAD sha of {op} differs from sha1 of its text")
            self.sha[op] = sha

    @staticmethod
    def head(qtype):
        """ARGV[1..4]: base "<prefix>:{<type>}", prefix, type, now ("": Redis clock)."""
        return [f"{PREFIX}:{{{qtype}}}", PREFIX, qtype, ""]

    def enqueue_cmd(self, qid, jid, payload=b'{"n":1}', qtype=QTYPE):
        return ["EVALSHA", self.sha["enqueue"], 0, *self.head(qtype),
                qid, jid, 0, payload, -1, ""]

    def dequeue_cmd(self, lease=1000, qtype=QTYPE):
        return ["EVALSHA", self.sha["dequeue"], 0, *self.head(qtype), lease]

    def finish_cmd(self, qid, jid, qtype=QTYPE):
        return ["EVALSHA", self.sha["finish"], 0, *self.head(qtype), qid, jid]


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
