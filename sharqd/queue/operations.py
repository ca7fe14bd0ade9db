"""
The queue operations, each one Lua script call over an injected execute
function.  Inputs are already validated; results are plain Python values.
"""

from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple, Optional

from sharqd.errors import Conflict, NotFound, QueueFull
from sharqd.redis.scripts import Script

_LUA = resources.files("sharqd.queue.lua")
_COMMON = _LUA.joinpath("common.lua").read_bytes()


def load_script(name, shared=True):
    """lua/<name>.lua, after the shared prelude unless told not."""
    body = _LUA.joinpath(name + ".lua").read_bytes()
    return Script(name, (_COMMON + b"\n" + body) if shared else body)


SCRIPTS = {name: load_script(name) for name in (
    "enqueue", "dequeue", "finish", "requeue", "interval", "deletequeue",
    "metrics", "enqueuebatch", "dequeuebatch", "finishbatch", "touch",
    "deadletters")}
LOCK = load_script("lock", shared=False)

# Members of a type's queue set one SSCAN reads: well under 1 ms of Redis
# time, and few round trips to reach a deep offset.
SCAN_STEP = 2000


class BatchJob(NamedTuple):
    """One job of a batch enqueue, validated.  payload is JSON text (UTF-8);
    max_queued_length None means no limit."""
    queue_id: str
    job_id: str
    interval: int
    payload: bytes
    requeue_limit: int
    max_queued_length: Optional[int] = None


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
    dead: list = ()  # jobs moved to the dead letters


def _duplicate(queue_type, queue_id, job_id):
    return Conflict(f"Job `{job_id}` is already pending or active in queue "
                    f"`{queue_type}/{queue_id}`.")


def _not_active(queue_type, queue_id, job_id):
    return NotFound(f"Job `{job_id}` is not active in queue `{queue_type}/{queue_id}`.")


def _not_dead(queue_type, queue_id, job_id):
    return NotFound(f"Job `{job_id}` of queue `{queue_type}/{queue_id}` "
                    f"is not a dead letter.")


def _enqueued(reply, queue_type, queue_id, job_id):
    if reply[0] == 409:
        raise _duplicate(queue_type, queue_id, job_id)
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
        raise _not_active(queue_type, queue_id, job_id)


class Queue:
    def __init__(self, execute, key_prefix="sharq_server", job_expire_interval=1000,
                 clock=None, dead_letter_limit=10000):
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
        self.dead_letter_limit = dead_letter_limit

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
        return tuple(await self._run("requeue", queue_type, batch,
                                     self.dead_letter_limit))

    async def queue_types(self):
        return sorted(t.decode() for t in await self.execute(
            b"SMEMBERS", f"{self.prefix}:types"))

    async def global_metrics(self):
        types, minutes, enq, deq, dead = await self._run("metrics", "", b"global")
        return sorted(t.decode() for t in types), Counts(minutes, enq, deq, dead)

    async def queue_ids(self, queue_type):
        """Every queue id of the type, sorted, read in bounded steps."""
        _, ids = await self.queue_id_page(queue_type, 0, None)
        return sorted(ids)

    async def queue_id_page(self, queue_type, offset, limit):
        """
        (number of queues of the type, up to limit of their ids from offset
        on; limit None: all), in Redis' scan order of the set, which stays
        the same while the set does not change.  Each SSCAN reads about
        SCAN_STEP members, so no call holds Redis for long however many
        queues there are (one SMEMBERS of 200,000 held it 0.2 s).
        """
        key = f"{self.prefix}:{{{queue_type}}}:queues"
        total = int(await self.execute(b"SCARD", key))
        ids, skip, cursor = [], offset, b"0"
        while limit is None or len(ids) < limit:
            cursor, members = await self.execute(b"SSCAN", key, cursor,
                                                 b"COUNT", SCAN_STEP)
            if skip >= len(members):
                skip -= len(members)
            else:
                ids.extend(m.decode() for m in members[skip:])
                skip = 0
            if cursor == b"0":
                break
        return total, ids[:limit]

    async def queue_metrics(self, queue_type, queue_id):
        length, minutes, enq, deq, dead = await self._run(
            "metrics", queue_type, b"queue", queue_id)
        return length, Counts(minutes, enq, deq, dead)

    async def ping(self):
        return await self.execute(b"PING")

    async def lock(self, token, ttl_ms):
        """Take (or keep) the requeue lock for ttl_ms; True when held."""
        return bool(await LOCK(self.execute, (f"{self.prefix}:requeue_lock",),
                               (b"acquire", token, ttl_ms)))

    async def unlock(self, token):
        return bool(await LOCK(self.execute, (f"{self.prefix}:requeue_lock",),
                               (b"release", token, 0)))

    # ---- batches, long-poll support, leases, dead letters

    async def enqueue_many(self, queue_type, jobs):
        """Store BatchJobs in one script call.  Returns, per job, the
        queue's pending length after it when stored, else the error the
        single enqueue would raise."""
        # the small fields in one argument, then the payloads: far cheaper
        # to send than six arguments per job
        fields = "".join(
            f"{job.queue_id} {job.job_id} {job.interval} {job.requeue_limit} "
            f"{'-' if job.max_queued_length is None else job.max_queued_length} "
            for job in jobs)
        reply = await self._run("enqueuebatch", queue_type, fields,
                                *(job.payload for job in jobs))
        results = []
        for i, job in enumerate(jobs):
            code, length = reply[2 * i], reply[2 * i + 1]
            if code == 201:
                results.append(length)
            elif code == 409:
                results.append(_duplicate(queue_type, job.queue_id, job.job_id))
            else:
                results.append(QueueFull(current_queue_length=length))
        return results

    async def dequeue_many(self, queue_type, count, lease=None):
        """Up to count ready jobs of the type, and the milliseconds until
        the type's next ready time (None when nothing is pending)."""
        reply = await self._run("dequeuebatch", queue_type,
                                lease or self.job_expire_interval, count)
        jobs = [Job(reply[i].decode(), reply[i + 1].decode(), reply[i + 2],
                    int(reply[i + 3]), reply[i + 4])
                for i in range(1, len(reply), 5)]
        next_ms = int(reply[0])
        return jobs, (None if next_ms < 0 else next_ms)

    async def finish_many(self, queue_type, jobs):
        """Finish (queue_id, job_id) pairs; per pair None or NotFound."""
        args = [part for pair in jobs for part in pair]
        reply = await self._run("finishbatch", queue_type, len(jobs), *args)
        return [None if done else _not_active(queue_type, queue_id, job_id)
                for done, (queue_id, job_id) in zip(reply, jobs)]

    async def touch(self, queue_type, queue_id, job_id, lease=None):
        """Move an active job's deadline to now + lease; returns the deadline
        (epoch ms)."""
        deadline = await self._run("touch", queue_type, queue_id, job_id,
                                   lease or self.job_expire_interval)
        if not deadline:
            raise _not_active(queue_type, queue_id, job_id)
        return int(deadline)

    async def dead_letters(self, queue_type, offset=0, limit=100):
        """(total, [entry JSON bytes, ...]) newest first."""
        reply = await self._run("deadletters", queue_type, b"list", offset, limit)
        return int(reply[0]), list(reply[1:])

    async def dead_letter_length(self, queue_type):
        return int(await self.execute(
            b"ZCARD", f"{self.prefix}:{{{queue_type}}}:dead"))

    async def retry_dead_letter(self, queue_type, queue_id, job_id):
        """Put a dead letter back into its queue; returns the pending length."""
        reply = await self._run("deadletters", queue_type, b"retry", queue_id, job_id)
        if reply[0] == 404:
            raise _not_dead(queue_type, queue_id, job_id)
        if reply[0] == 409:
            raise _duplicate(queue_type, queue_id, job_id)
        return reply[1]

    async def delete_dead_letter(self, queue_type, queue_id, job_id):
        if not await self._run("deadletters", queue_type, b"delete", queue_id, job_id):
            raise _not_dead(queue_type, queue_id, job_id)

    async def purge_dead_letters(self, queue_type):
        """Delete every dead letter of the type; returns how many."""
        return int(await self._run("deadletters", queue_type, b"purge"))
