"""
Import from the original SharQ Server: read the jobs waiting in its Redis
keys (the layout of the `sharq` 1.3.0 library) and enqueue them into sharqd
through sharqd's HTTP API, queue by queue, in order.

The original's keys, for a key prefix P (its `[redis] key_prefix`):

    P:ready:queue_type, P:active:queue_type   sets of queue types in use
    P:<type>                  zset: queue ids with pending jobs, by ready time
    P:<type>:<qid>            list: the queue's pending job ids, head first
    P:<type>:active           zset: "<qid>:<job_id>" handed out, by expiry
    P:payload                 hash: "<type>:<qid>:<job_id>" -> msgpack payload
    P:interval                hash: "<type>:<qid>" -> interval in ms
    P:<type>:<qid>:requeues_remaining   hash: job_id -> budget left (-1: forever)

A queue's active jobs go first (as the original's requeue would have put
them back at the front), in the order they were handed out, then its
pending jobs in list order. Each job keeps its payload, its queue's
interval and the requeue budget it has left.

Unless `keep` is set, each batch of jobs is removed from the original's
keys once sharqd has stored it (201, or 409: already there), so a re-run
after an interruption goes on where the last one stopped, and no job is
left for the original to hand out again. A job sharqd refuses (e.g. a
payload larger than its `max_request_size`) stays where it is and is
reported.
"""

import json
from dataclasses import dataclass, field

from sharqd_client.errors import Duplicate, RequestTooLarge, SharqdError

TOMBSTONE = "__sharqctl_imported__"
NO_LENGTH_LIMIT = 2 ** 52  # the largest max_queued_length sharqd accepts

# Remove imported pending jobs: KEYS[1] prefix; ARGV: type, qid, first index
# of the window, then one "1" (imported) or "0" (kept) flag and job id per
# position.  Fails (returns 0) when the window no longer holds those ids:
# something else changed the queue meanwhile.
_REMOVE_PENDING = """
local prefix, qtype, qid, start = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local list = prefix .. ':' .. qtype .. ':' .. qid
local n = (#ARGV - 3) / 2
local window = redis.call('LRANGE', list, start, start + n - 1)
if #window ~= n then return 0 end
for i = 1, n do
  if window[i] ~= ARGV[3 + 2 * i] then return 0 end
end
local removed = 0
for i = 1, n do
  if ARGV[2 + 2 * i] == '1' then
    local job_id = ARGV[3 + 2 * i]
    redis.call('LSET', list, start + i - 1, '""" + TOMBSTONE + """')
    redis.call('HDEL', prefix .. ':payload', qtype .. ':' .. qid .. ':' .. job_id)
    redis.call('HDEL', prefix .. ':' .. qtype .. ':' .. qid .. ':requeues_remaining', job_id)
    removed = removed + 1
  end
end
if removed > 0 then
  redis.call('LREM', list, removed, '""" + TOMBSTONE + """')
end
return 1
"""

# Remove imported active jobs: KEYS[1] prefix; ARGV: type, qid, job ids.
_REMOVE_ACTIVE = """
local prefix, qtype, qid = KEYS[1], ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local job_id = ARGV[i]
  if redis.call('ZREM', prefix .. ':' .. qtype .. ':active', qid .. ':' .. job_id) == 1 then
    redis.call('HDEL', prefix .. ':payload', qtype .. ':' .. qid .. ':' .. job_id)
    redis.call('HDEL', prefix .. ':' .. qtype .. ':' .. qid .. ':requeues_remaining', job_id)
  end
end
return 1
"""

# A queue whose jobs are all imported leaves no trace in the original's
# indexes (as the original's own dequeue and finish would leave them).
_FORGET_QUEUE = """
local prefix, qtype, qid = KEYS[1], ARGV[1], ARGV[2]
local list = prefix .. ':' .. qtype .. ':' .. qid
if redis.call('LLEN', list) == 0 then
  redis.call('ZREM', prefix .. ':' .. qtype, qid)
  redis.call('HDEL', prefix .. ':interval', qtype .. ':' .. qid)
  if redis.call('EXISTS', prefix .. ':' .. qtype) == 0 then
    redis.call('SREM', prefix .. ':ready:queue_type', qtype)
  end
end
if redis.call('EXISTS', prefix .. ':' .. qtype .. ':active') == 0 then
  redis.call('SREM', prefix .. ':active:queue_type', qtype)
end
return 1
"""


class QueueChanged(Exception):
    """The original's queue changed while it was imported: the original
    server (or its workers) still runs."""


@dataclass
class Tally:
    """What an import did (or, in a dry run, would do)."""

    queues: int = 0
    pending: int = 0  # jobs found pending
    active: int = 0  # jobs found active (put back as pending)
    imported: int = 0  # stored by sharqd now
    already: int = 0  # sharqd had them already (409): a re-run, or a duplicate id
    failed: int = 0  # refused by sharqd: left in the original
    skipped: int = 0  # no payload in the original (e.g. a repeated job id)
    failures: list = field(default_factory=list)  # (type, qid, job_id, message)

    def as_dict(self):
        return {"queues": self.queues, "pending": self.pending, "active": self.active,
                "imported": self.imported, "already": self.already,
                "failed": self.failed, "skipped": self.skipped,
                "failures": [{"queue_type": t, "queue_id": q, "job_id": j, "message": m}
                             for t, q, j, m in self.failures]}


def decode_payload(raw):
    """A payload as the original stored it (msgpack; older versions wrapped
    it in double quotes) -> a JSON value. Raises ValueError."""
    import msgpack

    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) > 1:
        raw = raw[1:-1]
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        json.dumps(payload)
    except Exception as e:
        raise ValueError(f"payload has no JSON form ({type(e).__name__}: {e})")
    return payload


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class OriginalKeys:
    """Reads (and, after import, removes) jobs in the original's keys."""

    def __init__(self, redis, prefix):
        self.redis = redis
        self.prefix = prefix
        self._remove_pending = redis.register_script(_REMOVE_PENDING)
        self._remove_active = redis.register_script(_REMOVE_ACTIVE)
        self._forget = redis.register_script(_FORGET_QUEUE)

    def key(self, *parts):
        return ":".join((self.prefix,) + parts)

    def queue_types(self):
        found = self.redis.smembers(self.key("ready", "queue_type")) | \
            self.redis.smembers(self.key("active", "queue_type"))
        return sorted(_text(t) for t in found)

    def queues(self, qtype):
        """[(queue_id, [active job ids in hand-out order])], queues by ready
        time, then queues with active jobs only."""
        ready = [_text(q) for q in self.redis.zrange(self.key(qtype), 0, -1)]
        active = {}
        for member in self.redis.zrange(self.key(qtype, "active"), 0, -1):
            queue_id, _, job_id = _text(member).partition(":")
            active.setdefault(queue_id, []).append(job_id)
        order = ready + sorted(set(active) - set(ready))
        return [(queue_id, active.get(queue_id, [])) for queue_id in order]

    def pending_count(self, qtype, queue_id):
        return self.redis.llen(self.key(qtype, queue_id))

    def pending_ids(self, qtype, queue_id, start, count):
        return [_text(j) for j in self.redis.lrange(self.key(qtype, queue_id), start,
                                                    start + count - 1)]

    def interval(self, qtype, queue_id):
        value = self.redis.hget(self.key("interval"), f"{qtype}:{queue_id}")
        return None if value is None else int(float(value))

    def jobs(self, qtype, queue_id, job_ids):
        """[(job_id, raw payload or None, requeues_remaining or None)]"""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.key("payload"), f"{qtype}:{queue_id}:{job_id}")
            pipe.hget(self.key(qtype, queue_id, "requeues_remaining"), job_id)
        values = pipe.execute()
        return [(job_id, values[2 * i], values[2 * i + 1]) for i, job_id in enumerate(job_ids)]

    def remove_pending(self, qtype, queue_id, start, outcomes):
        """outcomes: [(job_id, imported?)] for the list window at `start`."""
        args = [qtype, queue_id, start]
        for job_id, imported in outcomes:
            args += ["1" if imported else "0", job_id]
        if not self._remove_pending(keys=[self.prefix], args=args):
            raise QueueChanged(f"the original's queue {qtype}/{queue_id} changed while it was "
                               f"imported: stop the original SharQ server and its workers, "
                               f"then run the import again (it goes on where it stopped)")

    def remove_active(self, qtype, queue_id, job_ids):
        if job_ids:
            self._remove_active(keys=[self.prefix], args=[qtype, queue_id] + list(job_ids))

    def forget_queue(self, qtype, queue_id):
        self._forget(keys=[self.prefix], args=[qtype, queue_id])


class Importer:
    """Moves the original's jobs into sharqd through `client` (a Client).

    `progress(n)` is called after each batch with the number of jobs it
    settled; `default_interval` is used for a queue the original kept no
    interval for (one with active jobs only)."""

    def __init__(self, keys, client, keep=False, batch_size=200,
                 max_batch_bytes=512 * 1024, default_interval=1000, types=None,
                 progress=lambda n: None):
        self.keys = keys
        self.client = client
        self.keep = keep
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.default_interval = default_interval
        self.types = types
        self.progress = progress

    def queue_types(self):
        found = self.keys.queue_types()
        return [t for t in found if t in self.types] if self.types else found

    def count(self):
        """A dry run: {type: Tally} of what an import would move."""
        tallies = {}
        for qtype in self.queue_types():
            tally = tallies[qtype] = Tally()
            for queue_id, active in self.keys.queues(qtype):
                tally.queues += 1
                tally.active += len(active)
                tally.pending += self.keys.pending_count(qtype, queue_id)
        return tallies

    def run(self):
        """Import every queue of every type: {type: Tally}."""
        tallies = {}
        for qtype in self.queue_types():
            tally = tallies[qtype] = Tally()
            for queue_id, active in self.keys.queues(qtype):
                tally.queues += 1
                self._queue(qtype, queue_id, active, tally)
        return tallies

    def _queue(self, qtype, queue_id, active, tally):
        interval = self.keys.interval(qtype, queue_id)
        if interval is None:
            interval = self.default_interval
        tally.active += len(active)
        for start in range(0, len(active), self.batch_size):
            ids = active[start:start + self.batch_size]
            outcomes = self._send(qtype, queue_id, interval, ids, tally)
            if not self.keep:
                self.keys.remove_active(qtype, queue_id, [j for j, ok in outcomes if ok])
        start = 0  # in the list: the first position not yet settled
        while True:
            ids = self.keys.pending_ids(qtype, queue_id, start, self.batch_size)
            if not ids:
                break
            tally.pending += len(ids)
            outcomes = self._send(qtype, queue_id, interval, ids, tally)
            if self.keep:
                start += len(ids)
            else:
                self.keys.remove_pending(qtype, queue_id, start, outcomes)
                start += sum(1 for _, ok in outcomes if not ok)
        if not self.keep:
            self.keys.forget_queue(qtype, queue_id)

    def _send(self, qtype, queue_id, interval, ids, tally):
        """Enqueue one batch into sharqd: [(job_id, settled?)] in order; a
        job is settled when sharqd has it or the original has no payload
        for it (nothing to import)."""
        outcomes, jobs = [], []
        for job_id, raw, budget in self.keys.jobs(qtype, queue_id, ids):
            if raw is None:
                tally.skipped += 1
                outcomes.append((job_id, True))
                continue
            try:
                payload = decode_payload(raw)
            except ValueError as e:
                self._failed(tally, qtype, queue_id, job_id, str(e))
                outcomes.append((job_id, False))
                continue
            job = {"queue_id": queue_id, "job_id": job_id, "interval": interval,
                   "payload": payload,
                   "requeue_limit": -1 if budget is None else int(budget)}
            if isinstance(payload, dict) and "max_queued_length" in payload:
                # these jobs were accepted by the original already: the
                # length limit they carry must not refuse them now
                job["max_queued_length"] = NO_LENGTH_LIMIT
            jobs.append(job)
            outcomes.append((job_id, None))
        results = iter(self._store(qtype, jobs))
        settled = []
        for job_id, ok in outcomes:
            if ok is None:
                ok = self._settle(tally, qtype, queue_id, job_id, next(results))
            settled.append((job_id, ok))
        self.progress(len(settled))
        return settled

    def _store(self, qtype, jobs):
        """client.enqueue_many over batches that fit the server's body limit:
        a batch answered 413 is split in halves; a job alone that is too
        large gets that error as its result."""
        if not jobs:
            return []
        results, batch, size = [], [], 0
        for job in jobs:
            job_size = len(json.dumps(job))
            if batch and (size + job_size > self.max_batch_bytes):
                results += self._store_batch(qtype, batch)
                batch, size = [], 0
            batch.append(job)
            size += job_size
        return results + self._store_batch(qtype, batch)

    def _store_batch(self, qtype, batch):
        try:
            return self.client.enqueue_many(qtype, batch)
        except RequestTooLarge as e:
            if len(batch) == 1:
                return [e]
            half = len(batch) // 2
            return self._store_batch(qtype, batch[:half]) + \
                self._store_batch(qtype, batch[half:])

    def _settle(self, tally, qtype, queue_id, job_id, result):
        if isinstance(result, Duplicate):
            tally.already += 1
            return True
        if isinstance(result, SharqdError):
            self._failed(tally, qtype, queue_id, job_id, str(result))
            return False
        tally.imported += 1
        return True

    def _failed(self, tally, qtype, queue_id, job_id, message):
        tally.failed += 1
        if len(tally.failures) < 100:
            tally.failures.append((qtype, queue_id, job_id, message))
