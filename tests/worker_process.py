"""
A worker process for the worker tests: `python worker_process.py URL TYPE
LOG SECONDS LEASE_MS [CONCURRENCY]`. Its handler writes "start JOB" and
"done JOB" lines to LOG (flushed at once) around a sleep of SECONDS.
"""

import logging
import sys
import time

from sharqd_client import Client, Worker

url, queue_type, log_path, seconds, lease = sys.argv[1:6]
concurrency = int(sys.argv[6]) if len(sys.argv) > 6 else 1


def note(line):
    with open(log_path, "a") as f:
        f.write(line + "\n")


def handle(job):
    note(f"start {job.job_id}")
    time.sleep(float(seconds))
    note(f"done {job.job_id}")


logging.basicConfig(level=logging.INFO, stream=sys.stderr)
Worker(Client(url), queue_type, handle, concurrency=concurrency, lease=int(lease),
       wait=5, shutdown_timeout=20).run()
note("exited")
