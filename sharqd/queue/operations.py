"""
The queue operations, each one Lua script call over an injected execute
function.  Inputs are already validated; results are plain Python values.
"""

import heapq
import time
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import NamedTuple, Optional

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger

from sharqd.errors import (BadRequest, Conflict, NotFound, QueueFull, RedisUnavailable,
                           TypePaused)
from sharqd.queue.lua import SCRIPT_FLAGS, library, script_text
from sharqd.queue.shared import SharedRead, gather
from sharqd.redis.scripts import Functions, Library, Script


def load_script(name, shared=True):
    """lua/<name>.lua, after what it uses of the shared prelude unless told
    not (see sharqd/queue/lua/__init__.py)."""
    return Script(name, script_text(name, shared))


SCRIPTS = {name: load_script(name, shared) for name, (shared, _) in SCRIPT_FLAGS.items()}
LIBRARY = Library(*library(), SCRIPTS)

# Types a pass reads from the index of due types at most (the earliest
# first; more wait for the next pass): keeps that call to a few ms.
DUE_LIMIT = 10000
# Types one due-index call or ZMSCORE names at most.
DUE_STEP = 1000

# The registry of queue types (`<prefix>:registry`, a zset type -> epoch s)
# is what the requeue sweep and GET /metrics/ go through: no script touches
# a key outside its type's hash slot, so sharqd writes it itself, before a
# type's first enqueue and then at most every REGISTER_EVERY s per process.
# A type leaves it once idle (no queue, no count in 11 minutes) and not
# registered for FORGET_AFTER s, which is far longer than REGISTER_EVERY:
# a process about to enqueue has registered the type within REGISTER_EVERY.
REGISTER_EVERY = 60
FORGET_AFTER = 900

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
    lease_id: str = ""  # new at each hand-out: finish and touch may check it


@dataclass(frozen=True)
class Counts:
    """Enqueues and dequeues in each of the last ten minutes."""
    minutes: list
    enqueued: list
    dequeued: list
    dead: list = ()  # jobs moved to the dead letters
    finished: list = ()  # counted for all queues together only


# Queues one top-queues call reads: keeps each call well under a
# millisecond of Redis time, so concurrent enqueues are not held up.
STATS_STEP = 100
# stats calls of type_stats in flight at once when no limit is given
STATS_PARALLEL = 4
# Types one statsmany call reads at most (~20 µs of Redis time each).  A
# call costs sharqd ~40-70 µs of CPU whatever its size, but an enqueue
# that comes while it runs waits for all of it: with 8 types a call a
# scrape took 25 ms of sharqd CPU (2: 53 ms, one per type: 73 ms) yet
# delayed the enqueues during it more (bench/RESULTS-observability.md).
STATS_BATCH = 2
TOTALS = ("enqueued", "dequeued", "finished", "requeued", "dead_lettered",
          "rejected_duplicate", "rejected_max_queued_length")


@dataclass(frozen=True)
class TypeStats:
    """What a queue type holds now, and its event totals since it began."""
    queue_type: str
    pending: int
    active: int
    ready_queues: int
    dead_letters: int
    oldest_ready_age: float  # seconds the longest-ready queue has waited
    totals: dict = field(default_factory=dict)


@dataclass(frozen=True)
class QueueRow:
    """One queue of a type as the dashboard lists it."""
    queue_id: str
    pending: int
    active: int
    interval: int
    ready_at: Optional[int]  # epoch ms; None when nothing is pending


def _duplicate(queue_type, queue_id, job_id):
    return Conflict(f"Job `{job_id}` is already pending or active in queue "
                    f"`{queue_type}/{queue_id}`.")


def _not_active(queue_type, queue_id, job_id):
    return NotFound(f"Job `{job_id}` is not active in queue `{queue_type}/{queue_id}`.")


def _not_current_lease(queue_type, queue_id, job_id, lease_id):
    return Conflict(f"Lease `{lease_id}` of job `{job_id}` in queue "
                    f"`{queue_type}/{queue_id}` has ended: the job was handed out "
                    f"again, and only its current worker may finish or touch it.")


def _not_dead(queue_type, queue_id, job_id):
    return NotFound(f"Job `{job_id}` of queue `{queue_type}/{queue_id}` "
                    f"is not a dead letter.")


def _type_stats(queue_type, pending, active, ready, dead, head, now, totals):
    """A TypeStats; head is the earliest ready time (epoch ms, -1: none)."""
    age = max(0, now - head) / 1000.0 if head >= 0 else 0.0
    return TypeStats(queue_type, pending, active, ready, dead, age, totals)


_by_type = attrgetter("queue_type")


def _enqueued(reply, queue_type, queue_id, job_id):
    if reply[0] == 409:
        raise _duplicate(queue_type, queue_id, job_id)
    if reply[0] == 429:
        raise QueueFull(current_queue_length=reply[1])
    return reply[1]


def _dequeued(reply, queue_type):
    if reply is None:
        return None
    if reply == -1:
        raise TypePaused(queue_type)
    queue_id, job_id, payload, budget, left, lease_id = reply[:6]
    return Job(queue_id.decode(), job_id.decode(), payload, int(budget), left,
               lease_id.decode())


def _finished(reply, queue_type, queue_id, job_id, lease_id):
    if reply == 2:
        raise _not_current_lease(queue_type, queue_id, job_id, lease_id)
    if not reply:
        raise _not_active(queue_type, queue_id, job_id)


@dataclass(frozen=True)
class Policy:
    """A rate policy; None where not set.  See README "Rate policy"."""
    rate: Optional[float] = None
    burst: Optional[int] = None
    max_active: Optional[int] = None
    paused: Optional[bool] = None

    def as_dict(self):
        return {"rate": self.rate, "burst": self.burst, "max_active": self.max_active,
                "paused": self.paused}

    @classmethod
    def from_reply(cls, reply):
        rate, burst, max_active, paused = (value.decode() for value in reply)
        return cls(float(rate) if rate else None, int(burst) if burst else None,
                   int(max_active) if max_active else None,
                   {"1": True, "0": False}.get(paused))


POLICY_FIELDS = ("rate", "burst", "max_active", "paused")


def _policy_args(changes):
    """The put script's arguments: "" for a field not given, "-" for null."""
    def text(name):
        if name not in changes:
            return b""
        value = changes[name]
        if value is None:
            return b"-"
        if isinstance(value, bool):
            return b"1" if value else b"0"
        return repr(value).encode()
    return [text(name) for name in POLICY_FIELDS]


@dataclass(frozen=True)
class Explanation:
    """A queue's state and why it is (not) handing out jobs."""
    pending: int
    active: int
    source: str          # "queue" | "type" | "interval": where the policy comes from
    policy: Policy
    interval: int
    type_paused: bool
    tokens: int          # jobs its rate (or interval) lets go back to back now
    next_ready_at: Optional[int]  # epoch ms; None while held (paused, at its cap)
    reason: Optional[str]         # None when a job would go now
    now: int
    sources: dict = None  # rate, max_active, paused -> "queue" | "type" | None


def _head_score(head):
    return int(float(head[1])) if head else None


def _bytes(value):
    """A script's reply value (integer or bulk string) as bytes."""
    return value if isinstance(value, bytes) else b"%d" % value


# queues one sweep call re-places after a change of a type's default policy
SWEEP_STEP = 500

# The Redis layout the scripts read and write (docs/redis-layout.md); a
# type's totals hash says which one its keys are in once sharqd moved them
# (migrate.lua; sharqd/queue/migrate.py runs it at startup).
LAYOUT = b"2"


class Queue:
    log = Logger()

    def __init__(self, execute, key_prefix="sharq_server", job_expire_interval=1000,
                 clock=None, dead_letter_limit=10000, masters=None, durable=None,
                 node_of=None):
        """
        execute(*command) -> Deferred sends one Redis command, to the node
        of the key it names (a script's first key) on a cluster.  masters()
        gives an execute per master (default: [execute]).  durable, when
        given, is the execute for enqueues and finishes that waits for the
        replicas ([redis] wait_replicas).  clock, when given, is a callable
        returning epoch seconds used instead of the Redis server's clock
        (for tests); normally all sharqd processes share the Redis clock.
        node_of(key) names the node that holds a key (None when not known
        yet): scripts may read the keys of several types of one node
        (default: one node for all).
        """
        self.execute = execute
        self.masters = masters or (lambda: [execute])
        # the scripts, as Redis functions where this Redis has them
        self.call = Functions(LIBRARY, self.masters)
        self.durable = durable or execute
        self.node_of = node_of  # None: one node holds every key
        self.prefix = key_prefix
        self.registry = f"{key_prefix}:registry"
        # the index of due types (lua/due.lua), in a slot of its own
        self.due_keys = tuple(f"{key_prefix}:{{due}}:{name}" for name in ("at", "gen", "seq"))
        # types whose dequeue or touch failed: the script may have run (a
        # reply lost with its connection) and set a deadline nobody marked;
        # the requeue service checks them (unsure_types)
        self._unsure = set()
        self.job_expire_interval = job_expire_interval
        self.clock = clock
        self.dead_letter_limit = dead_letter_limit
        self._registered = {}  # queue type -> when this process last registered it
        self._known = set()  # types this process added to <prefix>:known_types
        self._lists = {}  # what -> (Redis replies, the sorted names made of them)
        # Deferred of the TypeStats of every known type; callers that come
        # while a read runs share its result (SharedRead)
        self.all_type_stats = SharedRead(self._read_all_type_stats)
        # while the layout is being upgraded: gate(call) -> Deferred of
        # call() once it is done (see sharqd/queue/migrate.py)
        self.gate = None

    def _run(self, name, queue_type, *args, execute=None):
        if self.gate is not None:
            return self.gate(lambda: self._script(name, queue_type, *args, execute=execute))
        return self._script(name, queue_type, *args, execute=execute)

    def _script(self, name, queue_type, *args, execute=None):
        now = b"" if self.clock is None else b"%d" % int(self.clock() * 1000)
        base = f"{self.prefix}:{{{queue_type}}}"
        # the base names the type's slot: a cluster routes by it
        return self.call(name, execute or self.execute, (base,),
                         (base, self.prefix, queue_type, now) + args)

    def _wall(self):
        return self.clock() if self.clock is not None else time.time()

    def _register(self, queue_type):
        """A Deferred that fires once the type is in the registry."""
        now = self._wall()
        d = self.execute(b"ZADD", self.registry, int(now), queue_type)
        return d.addCallback(self._registered_at, queue_type, now)

    def _registered_at(self, _, queue_type, now):
        self._registered[queue_type] = now

    def _registered_lately(self, queue_type):
        last = self._registered.get(queue_type)
        return last is not None and self._wall() - last < REGISTER_EVERY

    async def _ensure_registered(self, queue_type):
        if not self._registered_lately(queue_type):
            await self._register(queue_type)

    # enqueue, dequeue and finish are the hot path: plain Deferred callbacks,
    # which cost less than coroutines

    def enqueue(self, queue_type, queue_id, job_id, interval, payload,
                requeue_limit, max_queued_length=None):
        """Store a job; Deferred of the queue's pending length after it."""
        limit = b"" if max_queued_length is None else max_queued_length
        args = (queue_type, queue_id, job_id, interval, payload, requeue_limit, limit)
        # registered lately by this process (the common case): straight on
        if self._registered_lately(queue_type):
            return self._enqueue(*args)
        return self._register(queue_type).addCallback(lambda _: self._enqueue(*args))

    def _enqueue(self, queue_type, queue_id, job_id, interval, payload, requeue_limit,
                 limit):
        d = self._run("enqueue", queue_type, queue_id, job_id, interval,
                      payload, requeue_limit, limit, execute=self.durable)
        return d.addCallback(_enqueued, queue_type, queue_id, job_id)

    def dequeue(self, queue_type, lease=None):
        """Deferred of the next ready job of the type, or of None."""
        d = self._run("dequeue", queue_type, lease or self.job_expire_interval)
        return d.addCallbacks(self._marked_job, self._failed_unsure, (queue_type,), None,
                              (queue_type,))

    def _failed_unsure(self, failure, queue_type):
        self._unsure.add(queue_type)
        return failure

    def unsure_types(self):
        """The types whose dequeue (or touch) failed since the last call."""
        unsure, self._unsure = self._unsure, set()
        return sorted(unsure)

    def still_unsure(self, types):
        """unsure_types() gave these, and checking them failed."""
        self._unsure.update(types)

    def _marked_job(self, reply, queue_type):
        if isinstance(reply, list) and len(reply) > 6:
            # the job is answered once its deadline is in the index
            return self.mark_due([(queue_type, reply[6])]).addCallback(
                lambda _: _dequeued(reply, queue_type))
        return _dequeued(reply, queue_type)

    def finish(self, queue_type, queue_id, job_id, lease_id=None):
        """Finish an active job; with lease_id only if that is its current lease."""
        d = self._run("finish", queue_type, queue_id, job_id, lease_id or b"",
                      execute=self.durable)
        return d.addCallback(_finished, queue_type, queue_id, job_id, lease_id)

    async def set_interval(self, queue_type, queue_id, interval):
        if not await self._run("interval", queue_type, queue_id, interval):
            raise NotFound(f"Queue `{queue_type}/{queue_id}` does not exist.")

    async def delete_queue(self, queue_type, queue_id, purge_all=False):
        if not await self._run("deletequeue", queue_type, queue_id,
                               b"1" if purge_all else b"0"):
            raise NotFound(f"Queue `{queue_type}/{queue_id}` does not exist.")

    async def requeue(self, queue_type, batch):
        """Put back up to batch expired jobs; returns (requeued, discarded, seen)."""
        return (await self.requeue_batch(queue_type, batch))[:3]

    async def requeue_batch(self, queue_type, batch):
        """Put back up to batch expired jobs; returns (requeued, discarded,
        seen, the type's earliest deadline now or None)."""
        requeued, discarded, seen, head = await self._run(
            "requeue", queue_type, batch, self.dead_letter_limit)
        return requeued, discarded, seen, (None if head < 0 else head)

    # ---- the index of due types (lua/due.lua; see requeue.py)

    def mark_due(self, marks):
        """Lower the index's bound of each (type, deadline) of marks.
        Never fails: a mark that does not reach Redis is logged, and the
        requeue service's sweep finds the deadline.  Cancelling the
        Deferred returned (a client hanging up) leaves the mark going."""
        d = self.call("due", self.execute, self.due_keys,
                (b"mark", *(part for mark in marks for part in mark)))
        shield = Deferred()
        d.addErrback(self._not_marked, marks).chainDeferred(shield)
        return shield

    def _not_marked(self, failure, marks):
        self.log.warn("Deadlines of {types} not marked in the requeue index: {error}; "
                      "the requeue sweep will find them",
                      types=", ".join(t for t, _ in marks[:5]), error=failure.getErrorMessage())

    async def due_types(self, limit=DUE_LIMIT):
        """[(type, generation)] of up to limit types whose deadline bound
        has come, the earliest first."""
        now = b"" if self.clock is None else b"%d" % int(self.clock() * 1000)
        reply = await self.call("due", self.execute, self.due_keys, (b"due", now, limit))
        return [(reply[i].decode(), reply[i + 1]) for i in range(0, len(reply), 2)]

    async def settle_due(self, settled):
        """For each (type, generation, next deadline or None) of settled
        whose generation is unchanged, set the type's bound to next, or
        drop it from the index; returns how many were."""
        n = 0
        for i in range(0, len(settled), DUE_STEP):
            n += await self.call("due", self.execute, self.due_keys, (b"settle", *(
                part for t, generation, head in settled[i:i + DUE_STEP]
                for part in (t, generation, b"" if head is None else head))))
        return n

    async def due_bounds(self, types):
        """The index's bound of each type (None: not in the index)."""
        bounds = []
        for i in range(0, len(types), DUE_STEP):
            reply = await self.execute(b"ZMSCORE", self.due_keys[0], *types[i:i + DUE_STEP])
            bounds += [None if b is None else float(b) for b in reply]
        return bounds

    def earliest_deadline(self, queue_type):
        """Deferred of the earliest deadline (epoch ms) of the type's active
        jobs, or None.  (A plain Deferred: the sweep asks it of many types.)"""
        d = self.execute(b"ZRANGE", f"{self.prefix}:{{{queue_type}}}:deadlines",
                         0, 0, b"WITHSCORES")
        return d.addCallback(_head_score)

    async def registry_page(self, cursor, count):
        """(next cursor, [(type, epoch s of its last registration)]) of one
        ZSCAN of the registry: every type in it for a whole round of
        cursors is seen at least once."""
        cursor, flat = await self.execute(b"ZSCAN", self.registry, cursor, b"COUNT", count)
        return cursor, [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def registry_size(self):
        return int(await self.execute(b"ZCARD", self.registry))

    async def registered_types(self):
        """Every type of the registry (with `<prefix>:types`, the set of
        earlier versions, until its types are idle)."""
        registry = await self.execute(b"ZRANGE", self.registry, 0, -1)
        legacy = await self.legacy_types()
        return self._names("registered", (frozenset(registry), legacy), lambda: sorted(
            {t.decode() for t in registry}.union(legacy)))

    def _names(self, key, replies, make):
        """make(), a sorted list of type names from replies (sets: the
        registry's order moves with each registration), or the list it made
        the last time for the same replies (not to be changed): a scrape
        reads a thousand names each time, and decoding and sorting them
        again held the reactor for about 0.3 ms."""
        last = self._lists.get(key)
        if last is None or last[0] != replies:
            last = self._lists[key] = (replies, make())
        return last[1]

    async def legacy_types(self):
        """The types of `<prefix>:types`, the set of earlier versions."""
        return sorted(t.decode() for t in await self.execute(
            b"SMEMBERS", f"{self.prefix}:types"))

    async def queue_types(self):
        """The types with any pending or active job."""
        return (await self.global_metrics())[0]

    async def global_metrics(self):
        """The types with any pending or active job, and the counts of all
        types added up (each type's counts are in its own slot)."""
        types = await self.registered_types()
        replies = await gather([self._run("metrics", t, b"counts") for t in types])
        minutes = self._now_minutes()
        enq, deq, dead, done = [0] * 10, [0] * 10, [0] * 10, [0] * 10
        for reply in replies:
            minutes = reply[1]
            for i in range(10):
                enq[i] += reply[2][i]
                deq[i] += reply[3][i]
                dead[i] += reply[4][i]
                done[i] += reply[5][i]
        alive = sorted(t for t, reply in zip(types, replies) if reply[0])
        return alive, Counts(minutes, enq, deq, dead, done)

    def _now_minutes(self):
        now = int(self._wall() * 1000)
        minute = now - now % 60000
        return [minute - i * 60000 for i in range(9, -1, -1)]

    def forget_cutoff(self):
        """Types registered last before this (epoch s) may be forgotten."""
        return self._wall() - FORGET_AFTER

    async def forget_if_idle(self, queue_type, cutoff=None, score=False):
        """Drop an idle type from the registry if not registered since
        cutoff (default FORGET_AFTER s ago); True when dropped.  score:
        its registry score when the caller has just read it."""
        if cutoff is None:
            cutoff = self.forget_cutoff()
        if score is False:
            score = await self.execute(b"ZSCORE", self.registry, queue_type)
        if score is not None and float(score) > cutoff:
            return False
        if not await self._run("metrics", queue_type, b"idle"):
            return False
        await self.execute(b"SREM", f"{self.prefix}:types", queue_type)
        return bool(await self.call("prune", self.execute, (self.registry,),
                                    (queue_type, int(cutoff))))

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
        """PONG when every master answers."""
        await gather([execute(b"PING") for execute in self.masters()])
        return b"PONG"

    async def lock(self, queue_type, token, ttl_ms):
        """Take (or keep) the type's requeue lock for ttl_ms; True when held."""
        return bool(await self.call("lock", self.execute,
                                    (f"{self.prefix}:{{{queue_type}}}:requeue_lock",),
                                    (b"acquire", token, ttl_ms)))

    async def unlock(self, queue_type, token):
        return bool(await self.call("lock", self.execute,
                                    (f"{self.prefix}:{{{queue_type}}}:requeue_lock",),
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
        await self._ensure_registered(queue_type)
        reply = await self._run("enqueuebatch", queue_type, fields,
                                *(job.payload for job in jobs), execute=self.durable)
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
                                lease or self.job_expire_interval, count).addErrback(
                                    self._failed_unsure, queue_type)
        if reply[0] == -2:
            raise TypePaused(queue_type)
        if len(reply) % 6 == 2:  # the type's deadline bound went down
            await self.mark_due([(queue_type, reply.pop())])
        jobs = [Job(reply[i].decode(), reply[i + 1].decode(), reply[i + 2],
                    int(reply[i + 3]), reply[i + 4], reply[i + 5].decode())
                for i in range(1, len(reply), 6)]
        next_ms = int(reply[0])
        return jobs, (None if next_ms < 0 else next_ms)

    async def finish_many(self, queue_type, jobs):
        """Finish (queue_id, job_id[, lease_id or None]) tuples; per job None,
        NotFound or Conflict (not the current lease)."""
        jobs = [(job[0], job[1], job[2] if len(job) > 2 else None) for job in jobs]
        args = [part or b"" for job in jobs for part in job]
        reply = await self._run("finishbatch", queue_type, len(jobs), *args,
                                execute=self.durable)
        results = []
        for done, (queue_id, job_id, lease_id) in zip(reply, jobs):
            try:
                _finished(done, queue_type, queue_id, job_id, lease_id)
            except (NotFound, Conflict) as e:
                results.append(e)
            else:
                results.append(None)
        return results

    async def touch(self, queue_type, queue_id, job_id, lease=None, lease_id=None):
        """Move an active job's deadline to now + lease; returns the deadline
        (epoch ms).  With lease_id, only if that is its current lease."""
        reply = await self._run("touch", queue_type, queue_id, job_id,
                                lease or self.job_expire_interval, lease_id or b"").addErrback(
                                    self._failed_unsure, queue_type)
        if reply == -1:
            raise _not_current_lease(queue_type, queue_id, job_id, lease_id)
        if not reply:
            raise _not_active(queue_type, queue_id, job_id)
        if len(reply) > 1:  # a shorter lease: the type's deadline bound went down
            await self.mark_due([(queue_type, reply[1])])
        return int(reply[0])

    # ---- rate policies (queue_id None: the type's default policy)

    async def get_policy(self, queue_type, queue_id=None):
        """The stored Policy, or None when there is none."""
        reply = await self._run("policy", queue_type, b"get", queue_id or b"")
        return None if reply is None else Policy.from_reply(reply)

    async def put_policy(self, queue_type, queue_id, changes):
        """Change a queue's (or, queue_id None, the type's default) policy:
        changes maps fields to new values, None removing one; the others
        are kept.  It applies at once.  Returns the Policy stored."""
        reply = await self._run("policy", queue_type, b"put", queue_id or b"",
                                *_policy_args(changes))
        if reply == -1:
            raise BadRequest("`burst` needs a `rate`: give both (an `interval` alone "
                             "is a burst of 1).")
        if queue_id is None:
            await self._sweep(queue_type)
        return Policy.from_reply(reply)

    async def delete_policy(self, queue_type, queue_id=None):
        """Drop a policy; False when there was none."""
        existed = await self._run("policy", queue_type, b"delete", queue_id or b"")
        if existed and queue_id is None:
            await self._sweep(queue_type)
        return bool(existed)

    async def _sweep(self, queue_type):
        """Put every queue that follows the type's default policy in its
        place, in calls of about SWEEP_STEP queues (none holds Redis long);
        dequeues meanwhile check each queue they pick against its policy."""
        cursor = b"0"
        while True:
            cursor = await self._run("policy", queue_type, b"sweep", b"", cursor, SWEEP_STEP)
            if cursor in (b"0", 0):
                return

    async def pause_type(self, queue_type):
        return bool(await self._run("policy", queue_type, b"pause", b""))

    async def resume_type(self, queue_type):
        return bool(await self._run("policy", queue_type, b"resume", b""))

    async def explain(self, queue_type, queue_id):
        """An Explanation of the queue, from one script call."""
        (pending, active, source, rate, burst, max_active, paused, interval,
         type_paused, tokens, next_at, reason, now, *sources) = await self._run(
            "explain", queue_type, queue_id)
        policy = Policy.from_reply([_bytes(rate), _bytes(burst), _bytes(max_active), paused])
        return Explanation(int(pending), int(active), source.decode(), policy, int(interval),
                           type_paused == b"1", int(tokens),
                           None if next_at == -1 else int(next_at),
                           reason.decode() or None, int(now),
                           {name: source.decode() or None for name, source in
                            zip(("rate", "max_active", "paused"), sources)})

    async def dead_letters(self, queue_type, offset=0, limit=100):
        """(total, [entry JSON bytes, ...]) newest first."""
        reply = await self._run("deadletters", queue_type, b"list", offset, limit)
        return int(reply[0]), list(reply[1:])

    async def dead_letter_length(self, queue_type):
        return int(await self.execute(
            b"ZCARD", f"{self.prefix}:{{{queue_type}}}:dead"))

    async def retry_dead_letter(self, queue_type, queue_id, job_id):
        """Put a dead letter back into its queue; returns the pending length."""
        await self._ensure_registered(queue_type)
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

    # ---- figures for /prometheus and the dashboard

    async def type_stats(self, queue_type, limit=None):
        """A TypeStats, in one script call of O(log N) Redis time (see
        stats.lua); at most limit.tokens (a DeferredSemaphore) in flight."""
        limit = limit or DeferredSemaphore(STATS_PARALLEL)
        reply = await limit.run(self._run, "stats", queue_type)
        pending, active, ready, dead, head, now = (int(n) for n in reply[:6])
        raw = reply[6]
        totals = {name: 0 for name in TOTALS}
        totals.update((raw[i].decode(), int(raw[i + 1])) for i in range(0, len(raw), 2)
                      if raw[i].decode() in totals)
        return _type_stats(queue_type, pending, active, ready, dead, head, now, totals)

    def stats_batches(self, types, size=STATS_BATCH):
        """The types in batches of at most size that one stats_many call
        reads: on a cluster, the types of a batch are on one master (a type
        whose master is not known yet is a batch of its own)."""
        if self.node_of is None:
            return [types[i:i + size] for i in range(0, len(types), size)]
        nodes = {}
        for queue_type in types:
            node = self.node_of(f"{self.prefix}:{{{queue_type}}}")
            batches = nodes.setdefault(node, [[]])
            if node is None or len(batches[-1]) >= size:
                batches.append([])
            batches[-1].append(queue_type)
        return [batch for batches in nodes.values() for batch in batches if batch]

    async def stats_many(self, types):
        """The TypeStats of a batch of stats_batches, in one script call
        (statsmany.lua) of a few µs of Redis time per type.  A type whose
        pending count has no base yet is read alone with type_stats, and so
        is every type of the batch when a cluster refuses the call (a slot
        moved since the batch was made)."""
        bases = [f"{self.prefix}:{{{t}}}" for t in types]
        now = b"" if self.clock is None else b"%d" % int(self.clock() * 1000)
        call = partial(self.call, "statsmany", self.execute, bases[:1], [now, *bases])
        try:
            reply = await (self.gate(call) if self.gate is not None else call())
        except RedisUnavailable:
            raise
        except Exception as e:  # a cluster's "non local key" while slots move
            self.log.debug("Figures of {n} types read one by one: {e}", n=len(types), e=e)
            return [await self.type_stats(t) for t in types]
        lines = reply.split(b"\n")
        now = int(lines[0])
        out = []
        for queue_type, line in zip(types, lines[1:]):
            if line == b"?":
                out.append(await self.type_stats(queue_type))
                continue
            n = [int(x) for x in line.split()]
            out.append(_type_stats(queue_type, n[0], n[1], n[2], n[3], n[4], now,
                                   dict(zip(TOTALS, n[5:]))))
        return out

    async def known_types(self):
        """Every type with jobs now or seen by an earlier call: a type keeps
        its dead letters and totals after its last queue is gone."""
        known = f"{self.prefix}:known_types"
        now = await self.registered_types()
        # added by this process already: not sent again (a scrape would
        # send a thousand names each time)
        new = [t for t in now if t not in self._known]
        if new:
            await self.execute(b"SADD", known, *new)
            self._known.update(new)
        members = await self.execute(b"SMEMBERS", known)
        return self._names("known", (frozenset(members), now), lambda: sorted(
            {t.decode() for t in members}.union(now)))

    async def _read_all_type_stats(self):
        """TypeStats of every known type, in the order of known_types: one
        batch call at a time, so that another request's script waits
        behind one of them at most (a batch holds Redis ~0.15 ms)."""
        stats = []
        for batch in self.stats_batches(await self.known_types()):
            stats += await self.stats_many(batch)
        return sorted(stats, key=_by_type)

    async def top_queues(self, queue_type, limit=50, step=STATS_STEP, sort="pending"):
        """The first limit queues of the type (with pending or active jobs),
        as QueueRows: the most pending first (ties by queue id), or by
        queue id with sort="queue_id"."""
        if sort == "queue_id":
            def order(r):
                return r.queue_id
        else:
            def order(r):
                return (-r.pending, r.queue_id)
        rows, cursor = {}, b"0"
        while True:
            reply = await self._run("topqueues", queue_type, cursor, step, limit, sort)
            cursor = reply[0]
            for i in range(1, len(reply), 5):
                ready_at = int(reply[i + 4])
                row = QueueRow(reply[i].decode(), int(reply[i + 1]), int(reply[i + 2]),
                               int(reply[i + 3]), None if ready_at < 0 else ready_at)
                rows[row.queue_id] = row  # SSCAN may give a queue twice
            rows = {r.queue_id: r for r in heapq.nsmallest(limit, rows.values(), key=order)}
            if cursor == b"0":
                return sorted(rows.values(), key=order)

    # ---- the layout upgrade (sharqd/queue/migrate.py)

    async def types_to_upgrade(self):
        """Every type sharqd knows of (registry, known types) whose keys are
        not marked as in LAYOUT."""
        types = await self.known_types()
        marks = await gather([self.execute(b"HGET", self._totals(t), b"layout")
                               for t in types])
        return [t for t, mark in zip(types, marks) if mark != LAYOUT]

    def _totals(self, queue_type):
        return f"{self.prefix}:{{{queue_type}}}:totals"

    async def upgrade_type(self, queue_type):
        """Move every queue of the type to LAYOUT, one script call (one
        atomic step) per queue, then mark the type; returns how many queues
        moved.  Harmless to run again, or after a crash half-way."""
        key = f"{self.prefix}:{{{queue_type}}}:queues"
        moved, cursor = 0, b"0"
        while True:
            cursor, members = await self.execute(b"SSCAN", key, cursor, b"COUNT", SCAN_STEP)
            for queue_id in members:
                moved += await self._script("migrate", queue_type, queue_id)
            if cursor == b"0":
                break
        await self.execute(b"HSET", self._totals(queue_type), b"layout", LAYOUT)
        return moved

    async def mark_layout(self):
        """Say that every type is in LAYOUT (worker processes wait for it)."""
        await self.execute(b"SET", f"{self.prefix}:layout", LAYOUT)

    async def layout_marked(self):
        return await self.execute(b"GET", f"{self.prefix}:layout") == LAYOUT

    async def redis_version(self):
        """The Redis server's version, from INFO."""
        info = (await self.execute(b"INFO", b"server")).decode()
        for line in info.splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
        return "unknown"
