"""
What the parts of the wrk bench (bench/run.py) share: the repository's
paths, the queue type and key prefix the loads use, logging, and the time
budget.  Stdlib only.
"""

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREFIX = "sharq_server"
QTYPE = "bench"
BASE = f"{PREFIX}:{{{QTYPE}}}"
NQUEUES = 1000          # queues the wrk and redis-benchmark loads spread over
WORKLOADS = ("enqueue", "dequeue", "dequeue_finish")
LABEL = {"enqueue": "enqueue", "dequeue": "dequeue", "dequeue_finish": "dequeue+finish"}


def in_repo(text):
    """text with this checkout's absolute path written as a relative one:
    the results name no path of the machine they were taken on."""
    return str(text).replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Deadline:
    def __init__(self, minutes):
        self.end = time.monotonic() + minutes * 60

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise BenchError(f"time budget spent before {what}")
