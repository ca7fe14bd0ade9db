"""
The queue operations, each one Lua script call over an injected execute
function.  Inputs are already validated; results are plain Python values.
"""

from dataclasses import dataclass

from sharqd.errors import Conflict, NotFound, QueueFull
from sharqd.scripts import Script

SCRIPTS = {name: Script.load(name) for name in (
    "enqueue", "dequeue", "finish", "requeue", "interval", "deletequeue",
    "metrics")}
LOCK = Script.load("lock", shared=False)


@dataclass(frozen=True)
class Job:
    """A dequeued job.  payload is the JSON text exactly as stored."""
    queue_id: str
    job_id: str
    payload: bytes
    requeues_remaining: int
    current_queue_length: int


@dataclass(frozen=True)
class Counts:
    """Enqueues and dequeues in each of the last ten minutes."""
    minutes: list
    enqueued: list
    dequeued: list


def _enqueued(reply, queue_type, queue_id, job_id):
    if reply[0] == 409:
        raise Conflict(f"Job `{job_id}` is already pending or active in queue "
                       f"`{queue_type}/{queue_id}`.")
    if reply[0] == 429:
        raise QueueFull(current_queue_length=reply[1])
    return reply[1]


def _dequeued(reply):
    if reply is None:
        return None
    queue_id, job_id, payload, budget, left = reply
    return Job(queue_id.decode(), job_id.decode(), payload, int(budget), left)


def _finished(reply, queue_type, queue_id, job_id):
    if not reply:
        raise NotFound(f"Job `{job_id}` is not active in queue "
                       f"`{queue_type}/{queue_id}`.")


class Queue:
    def __init__(self, execute, key_prefix="sharq_server", job_expire_interval=1000,
                 clock=None):
        """
        execute(*command) -> Deferred sends one Redis command.  clock, when
        given, is a callable returning epoch seconds used instead of the
        Redis server's clock (for tests); normally all sharqd processes
        share the Redis clock.
        """
        self.execute = execute
        self.prefix = key_prefix
        self.job_expire_interval = job_expire_interval
        self.clock = clock

    def _run(self, name, queue_type, *args):
        now = b"" if self.clock is None else b"%d" % int(self.clock() * 1000)
        head = (f"{self.prefix}:{{{queue_type}}}", self.prefix, queue_type, now)
        return SCRIPTS[name](self.execute, (), head + args)

    # enqueue, dequeue and finish are the hot path: plain Deferred callbacks,
    # which cost less than coroutines

    def enqueue(self, queue_type, queue_id, job_id, interval, payload,
                requeue_limit, max_queued_length=None):
        """Store a job; Deferred of the queue's pending length after it."""
        limit = b"" if max_queued_length is None else max_queued_length
        d = self._run("enqueue", queue_type, queue_id, job_id, interval,
                      payload, requeue_limit, limit)
        return d.addCallback(_enqueued, queue_type, queue_id, job_id)

    def dequeue(self, queue_type, lease=None):
        """Deferred of the next ready job of the type, or of None."""
        d = self._run("dequeue", queue_type, lease or self.job_expire_interval)
        return d.addCallback(_dequeued)

    def finish(self, queue_type, queue_id, job_id):
        d = self._run("finish", queue_type, queue_id, job_id)
        return d.addCallback(_finished, queue_type, queue_id, job_id)

    async def set_interval(self, queue_type, queue_id, interval):
        if not await self._run("interval", queue_type, queue_id, interval):
            raise NotFound(f"Queue `{queue_type}/{queue_id}` does not exist.")

    async def delete_queue(self, queue_type, queue_id, purge_all=False):
        if not await self._run("deletequeue", queue_type, queue_id,
                               b"1" if purge_all else b"0"):
            raise NotFound(f"Queue `{queue_type}/{queue_id}` does not exist.")

    async def requeue(self, queue_type, batch):
        """Put back up to batch expired jobs; returns (requeued, discarded, seen)."""
        return tuple(await self._run("requeue", queue_type, batch))

    async def queue_types(self):
        return sorted(t.decode() for t in await self.execute(
            b"SMEMBERS", f"{self.prefix}:types"))

    async def global_metrics(self):
        types, minutes, enq, deq = await self._run("metrics", "", b"global")
        return sorted(t.decode() for t in types), Counts(minutes, enq, deq)

    async def queue_ids(self, queue_type):
        return sorted(q.decode() for q in await self._run("metrics", queue_type, b"type"))

    async def queue_metrics(self, queue_type, queue_id):
        length, minutes, enq, deq = await self._run(
            "metrics", queue_type, b"queue", queue_id)
        return length, Counts(minutes, enq, deq)

    async def ping(self):
        return await self.execute(b"PING")

    async def lock(self, token, ttl_ms):
        """Take (or keep) the requeue lock for ttl_ms; True when held."""
        return bool(await LOCK(self.execute, (f"{self.prefix}:requeue_lock",),
                               (b"acquire", token, ttl_ms)))

    async def unlock(self, token):
        return bool(await LOCK(self.execute, (f"{self.prefix}:requeue_lock",),
                               (b"release", token, 0)))
