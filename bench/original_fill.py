"""
Run by the original's Python (its venv, see bench/sidebyside.py): enqueue
or dequeue jobs straight in Redis with the original's own Lua scripts,
pipelined, as its server would one by one.  Prints how many calls
succeeded.

    VENV/bin/python bench/original_fill.py CONFIG enqueue JOBS QUEUES PAYLOAD_JSON
    VENV/bin/python bench/original_fill.py CONFIG dequeue JOBS
"""

import json
import sys
import time

from sharq import SharQ
from sharq.utils import serialize_payload

QTYPE = "bench"
CHUNK = 1000


def enqueue(sq, jobs, queues, payload):
    packed = serialize_payload(payload)
    client = sq.redis_client()
    for start in range(0, jobs, CHUNK):
        pipe = client.pipeline(transaction=False)
        now = str(int(time.time() * 1000))
        for i in range(start, min(jobs, start + CHUNK)):
            # the arguments SharQ.enqueue passes to its enqueue script
            sq._lua_enqueue(keys=[sq._key_prefix, QTYPE],
                            args=[now, f"q{i % queues}", f"j{i}", packed, 0, -1],
                            client=pipe)
        pipe.execute()
    return jobs


def dequeue(sq, jobs):
    client = sq.redis_client()
    taken = 0
    for start in range(0, jobs, CHUNK):
        pipe = client.pipeline(transaction=False)
        now = str(int(time.time() * 1000))
        for _ in range(start, min(jobs, start + CHUNK)):
            sq._lua_dequeue(keys=[sq._key_prefix, QTYPE],
                            args=[now, sq._job_expire_interval], client=pipe)
        taken += sum(1 for reply in pipe.execute() if len(reply) >= 4)
    return taken


def main():
    config, mode, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sq = SharQ(config)
    if mode == "enqueue":
        print(enqueue(sq, jobs, int(sys.argv[4]), json.loads(sys.argv[5])))
    else:
        print(dequeue(sq, jobs))


if __name__ == "__main__":
    main()
