"""
The HTTP client of sharqd: `Client` (blocking) and `AsyncClient` (asyncio),
one set of methods over two ways of sending.

Each method describes its request as a `_Call` (route, arguments, whether it
is safe to send twice, how to read the answer); `Client` and `AsyncClient`
only send calls, retrying the idempotent ones on 503 and on connection
errors with exponential backoff.
"""

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import quote

import httpx

from sharqd_client.errors import (ConnectionFailed, Duplicate, NotFound, ServerError,
                                  Unavailable, error_for)

DEFAULT_URL = "http://127.0.0.1:8080"
MAX_BATCH = 1000  # jobs per batch enqueue / finish request (the server's limit)


@dataclass(frozen=True)
class Job:
    """A dequeued job. `lease_id` is set by servers that hand out leases."""

    queue_type: str
    queue_id: str
    job_id: str
    payload: Any
    requeues_remaining: int
    current_queue_length: Optional[int] = None
    lease_id: Optional[str] = None


@dataclass(frozen=True)
class Enqueued:
    """A stored job: its id, and the queue's length before it when the
    enqueue carried `max_queued_length`."""

    job_id: str
    current_queue_length: Optional[int] = None


@dataclass(frozen=True)
class DeadLetterPage:
    total: int
    offset: int
    limit: int
    dead_letters: list


@dataclass
class _Call:
    """One request and how to read its answer.

    ok(body) reads a 2xx answer; on_error(error, retried) may turn a failure
    into a result (e.g. a retried enqueue answering 409 was stored by the
    first try) or raise it."""

    method: str
    path: str
    params: Optional[dict] = None
    body: Any = None
    idempotent: bool = False
    ok: Callable = lambda body: body
    on_error: Optional[Callable] = None
    timeout: Optional[float] = None
    retried: bool = field(default=False, init=False)


def _path(*segments):
    return "/" + "".join(quote(str(s), safe="") + "/" for s in segments)


def _raise(error, retried=False):
    raise error


def _absent_on_retry(error, retried):
    """A retried delete/finish that answers 404 did its work on a try whose
    answer was lost."""
    if retried and isinstance(error, NotFound):
        return None
    raise error


def _job(queue_type, data):
    return Job(queue_type, data["queue_id"], data["job_id"], data.get("payload"),
               data.get("requeues_remaining", -1), data.get("current_queue_length"),
               data.get("lease_id"))


def _enqueue_body(job):
    body = {"job_id": job.get("job_id") or uuid.uuid4().hex,
            "interval": job["interval"], "payload": job.get("payload")}
    for name in ("queue_id", "requeue_limit", "max_queued_length"):
        if job.get(name) is not None:
            body[name] = job[name]
    return body


def _job_key(job):
    """(queue_id, job_id, lease_id) of a Job or a (queue_id, job_id) pair."""
    if isinstance(job, Job):
        return job.queue_id, job.job_id, job.lease_id
    queue_id, job_id = job[:2]
    return queue_id, job_id, (job[2] if len(job) > 2 else None)


class _Api:
    """The methods shared by Client and AsyncClient; each returns what
    `self._send_call` makes of its `_Call`."""

    def __init__(self, url=DEFAULT_URL, token=None, timeout=10.0, retry_for=30.0,
                 backoff=0.1, max_backoff=5.0, transport=None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._transport = transport
        self.headers = {"Accept": "application/json", "Content-Type": "application/json",
                        "User-Agent": "sharqd-client"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def settings(self):
        """The arguments to build another client to the same server."""
        return dict(url=self.url, token=self.token, timeout=self.timeout,
                    retry_for=self.retry_for, backoff=self.backoff,
                    max_backoff=self.max_backoff)

    # ---- health

    def ping(self):
        """GET /: True when the process answers."""
        return self._send_call(_Call("GET", "/", idempotent=True, ok=lambda b: True))

    def deep_status(self):
        """GET /deepstatus/: True when sharqd reaches Redis (Unavailable if not)."""
        return self._send_call(_Call("GET", "/deepstatus/", ok=lambda b: True))

    # ---- producing

    def enqueue(self, queue_type, queue_id, payload, *, interval, job_id=None,
                requeue_limit=None, max_queued_length=None):
        """Store one job; returns `Enqueued`. Without `job_id` a random one is
        made, so the call is safe to retry: a retry answering 409 means the
        first try stored the job. Raises Duplicate (409) when the job id is
        already pending or active, QueueFull (429)."""
        body = _enqueue_body(dict(job_id=job_id, interval=interval, payload=payload,
                                  requeue_limit=requeue_limit,
                                  max_queued_length=max_queued_length))

        def ok(answer):
            return Enqueued(body["job_id"], answer.get("current_queue_length"))

        def on_error(error, retried):
            if error.status == 409:
                if retried:
                    return Enqueued(body["job_id"])
                raise Duplicate(error.message, 409, error.body)
            raise error

        return self._send_call(_Call("POST", _path("enqueue", queue_type, queue_id),
                                     body=body, idempotent=True, ok=ok, on_error=on_error))

    def _enqueue_batch(self, queue_type, jobs):
        bodies = [_enqueue_body(job) for job in jobs]
        call = _Call("POST", _path("enqueue", queue_type), body={"jobs": bodies},
                     idempotent=True)

        def ok(answer):
            results = []
            for job, result in zip(bodies, answer["results"]):
                if result.get("status") == "queued":
                    results.append(Enqueued(job["job_id"], result.get("current_queue_length")))
                elif result.get("code") == 409 and call.retried:
                    results.append(Enqueued(job["job_id"]))
                elif result.get("code") == 409:
                    results.append(Duplicate(result.get("message", ""), 409, result))
                else:
                    results.append(error_for(result.get("code", 500), result))
            return results

        call.ok = ok
        return call

    # ---- working

    def _dequeue_call(self, queue_type, wait, count, lease):
        params = {name: value for name, value in
                  (("wait", wait), ("count", count), ("lease", lease)) if value is not None}

        def ok(answer):
            if count is None:
                return _job(queue_type, answer)
            return [_job(queue_type, job) for job in answer["jobs"]]

        def on_error(error, retried):
            if isinstance(error, NotFound) and "No such route" not in error.message:
                return None if count is None else []
            raise error

        # a long-poll holds the answer for up to `wait` seconds
        timeout = None if wait is None else self.timeout + wait
        return _Call("GET", _path("dequeue", queue_type), params=params or None,
                     ok=ok, on_error=on_error, timeout=timeout)

    def dequeue(self, queue_type="default", *, wait=None, count=None, lease=None):
        """The next ready job (None when none is ready), or with `count` a
        list of up to `count` jobs. `wait`: long-poll up to that many seconds;
        `lease`: ms to finish in. Never retried: a lost answer may have taken
        a job, which comes back when its lease ends."""
        return self._send_call(self._dequeue_call(queue_type, wait, count, lease))

    def finish(self, queue_type, queue_id=None, job_id=None, *, lease_id=None):
        """Finish an active job: finish(job) or finish(type, queue_id, job_id).
        Raises NotFound when the job is not active (expired, finished)."""
        if isinstance(queue_type, Job):
            job = queue_type
            queue_type, queue_id, job_id = job.queue_type, job.queue_id, job.job_id
            lease_id = lease_id or job.lease_id
        params = {"lease_id": lease_id} if lease_id else None
        return self._send_call(_Call("POST", _path("finish", queue_type, queue_id, job_id),
                                     params=params, idempotent=True, ok=lambda b: None,
                                     on_error=_absent_on_retry))

    def _finish_batch(self, queue_type, jobs):
        entries = []
        for job in jobs:
            queue_id, job_id, lease_id = _job_key(job)
            entry = {"queue_id": queue_id, "job_id": job_id}
            if lease_id:
                entry["lease_id"] = lease_id
            entries.append(entry)
        call = _Call("POST", _path("finish", queue_type), body={"jobs": entries},
                     idempotent=True)

        def ok(answer):
            return [None if r.get("status") == "success"
                    or (call.retried and r.get("code") == 404)
                    else error_for(r.get("code", 500), r) for r in answer["results"]]

        call.ok = ok
        return call

    def touch(self, queue_type, queue_id=None, job_id=None, *, lease=None, lease_id=None):
        """Extend an active job's lease to now + `lease` ms (the server's
        job_expire_interval by default); returns the new deadline (epoch ms).
        touch(job, lease=...) works too."""
        if isinstance(queue_type, Job):
            job = queue_type
            queue_type, queue_id, job_id = job.queue_type, job.queue_id, job.job_id
            lease_id = lease_id or job.lease_id
        body = {}
        if lease is not None:
            body["lease"] = lease
        if lease_id:
            body["lease_id"] = lease_id
        return self._send_call(_Call("POST", _path("touch", queue_type, queue_id, job_id),
                                     body=body, idempotent=True,
                                     ok=lambda answer: answer["deadline"]))

    # ---- operating

    def interval(self, queue_type, queue_id, interval):
        """Set a queue's interval (ms); it sticks while the queue exists."""
        return self._send_call(_Call("POST", _path("interval", queue_type, queue_id),
                                     body={"interval": interval}, idempotent=True,
                                     ok=lambda b: None))

    def metrics(self, queue_type=None, queue_id=None, offset=None, limit=None):
        """The answer of /metrics/, /metrics/TYPE/ or /metrics/TYPE/QUEUE/.
        /metrics/TYPE/ lists one page of queue ids (`offset`, `limit`;
        the server's default: the first 1000), with their `total`."""
        segments = ["metrics"] + [s for s in (queue_type, queue_id) if s is not None]
        params = {k: v for k, v in (("offset", offset), ("limit", limit)) if v is not None}
        return self._send_call(_Call("GET", _path(*segments), idempotent=True,
                                     params=params or None, ok=_without_status))

    def delete_queue(self, queue_type, queue_id, purge_all=False):
        """Remove a queue's pending jobs (with `purge_all` its active jobs
        and interval too). Raises NotFound for an unknown queue."""
        return self._send_call(_Call("DELETE", _path("deletequeue", queue_type, queue_id),
                                     body={"purge_all": purge_all}, idempotent=True,
                                     ok=lambda b: None, on_error=_absent_on_retry))

    def dead_letters(self, queue_type, offset=0, limit=100):
        """One page of a type's dead letters, newest first."""
        return self._send_call(_Call(
            "GET", _path("deadletters", queue_type), idempotent=True,
            params={"offset": offset, "limit": limit},
            ok=lambda a: DeadLetterPage(a["total"], a["offset"], a["limit"],
                                        a["dead_letters"])))

    def retry_dead_letter(self, queue_type, queue_id, job_id):
        """Put a dead letter back at the end of its queue. Not retried on
        503 (a lost answer may have moved it already): call again if needed."""
        return self._send_call(_Call(
            "POST", _path("deadletters", queue_type, queue_id, job_id, "retry"),
            ok=lambda b: None))

    def delete_dead_letter(self, queue_type, queue_id, job_id):
        return self._send_call(_Call(
            "DELETE", _path("deadletters", queue_type, queue_id, job_id), idempotent=True,
            ok=lambda b: None, on_error=_absent_on_retry))

    def purge_dead_letters(self, queue_type):
        """Delete every dead letter of a type; returns how many there were."""
        return self._send_call(_Call("DELETE", _path("deadletters", queue_type),
                                     idempotent=True, ok=lambda a: a["deleted"]))

    # ---- queues and policies (routes of servers that have them: issue 11's
    # policies, pause and explain; issue 12's queue listing)

    def queues(self, queue_type, sort="pending", limit=50):
        """GET /queues/TYPE/?sort=&limit=: the busiest queues of a type."""
        return self._send_call(_Call("GET", _path("queues", queue_type), idempotent=True,
                                     params={"sort": sort, "limit": limit},
                                     ok=_listing))

    def queue(self, queue_type, queue_id):
        """GET /queues/TYPE/QUEUE/: a queue's state and why it is not ready."""
        return self._send_call(_Call("GET", _path("queues", queue_type, queue_id),
                                     idempotent=True, ok=_without_status))

    def policy(self, queue_type, queue_id=None):
        """The policy of a queue, or with no queue_id the type's default."""
        return self._send_call(_Call("GET", _policy_path(queue_type, queue_id),
                                     idempotent=True, ok=_without_status))

    def set_policy(self, queue_type, queue_id=None, **fields):
        """PUT a policy: rate, burst, max_active, paused (any of them)."""
        return self._send_call(_Call("PUT", _policy_path(queue_type, queue_id),
                                     body=fields, idempotent=True, ok=_without_status))

    def delete_policy(self, queue_type, queue_id=None):
        return self._send_call(_Call("DELETE", _policy_path(queue_type, queue_id),
                                     idempotent=True, ok=lambda b: None,
                                     on_error=_absent_on_retry))

    def pause(self, queue_type):
        """Stop handing out jobs of a type (they stay; enqueues still work)."""
        return self._send_call(_Call("POST", _path("pause", queue_type), idempotent=True,
                                     ok=lambda b: None))

    def resume(self, queue_type):
        return self._send_call(_Call("POST", _path("resume", queue_type), idempotent=True,
                                     ok=lambda b: None))

    # ---- the answer of a sent call

    def _request_args(self, call):
        content = None if call.body is None else json.dumps(call.body).encode()
        return dict(method=call.method, url=self.url + call.path, params=call.params,
                    content=content, headers=self.headers,
                    timeout=call.timeout or self.timeout)

    def _read(self, call, response):
        """The result of an answer, or the exception to raise or retry on."""
        try:
            body = response.json()
        except ValueError:
            return ServerError(f"{call.method} {call.path}: the answer is not JSON "
                               f"(HTTP {response.status_code}): {response.text[:200]!r}",
                               response.status_code)
        if 200 <= response.status_code < 300:
            return _Result(call.ok(body))
        return error_for(response.status_code, body)

    def _settle(self, call, outcome):
        if isinstance(outcome, _Result):
            return outcome.value
        return (call.on_error or _raise)(outcome, call.retried)

    def _should_retry(self, call, outcome, started):
        return (call.idempotent and isinstance(outcome, Unavailable)
                and time.monotonic() - started < self.retry_for)

    def _delay(self, attempt):
        """Exponential backoff with jitter: half fixed, half random."""
        delay = min(self.max_backoff, self.backoff * 2 ** attempt)
        return delay / 2 + random.uniform(0, delay / 2)

    def _connection_failed(self, call, error):
        return ConnectionFailed(f"{call.method} {self.url}{call.path}: no answer "
                                f"({type(error).__name__}: {error})")


class _Result:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _listing(answer):
    """The list of a listing answer: its `queues`, else its one list."""
    if "queues" in answer:
        return answer["queues"]
    return next((v for v in answer.values() if isinstance(v, list)), [])


def _without_status(answer):
    return {k: v for k, v in answer.items() if k != "status"}


def _policy_path(queue_type, queue_id):
    return _path("policy", queue_type) if queue_id is None else \
        _path("policy", queue_type, queue_id)


def _chunks(items, size=MAX_BATCH):
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


class Client(_Api):
    """A blocking client of one sharqd server (thread-safe: httpx pools
    connections).

    `token` is sent as `Authorization: Bearer`; `timeout` bounds each
    request (a long-poll gets its `wait` on top); idempotent calls are
    retried on 503 and connection errors for up to `retry_for` seconds."""

    def __init__(self, url=DEFAULT_URL, token=None, timeout=10.0, **options):
        super().__init__(url, token, timeout, **options)
        self._http = httpx.Client(transport=self._transport)

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send_call(self, call):
        started, attempt = time.monotonic(), 0
        while True:
            try:
                outcome = self._read(call, self._http.request(**self._request_args(call)))
            except httpx.TransportError as e:
                outcome = self._connection_failed(call, e)
            if not self._should_retry(call, outcome, started):
                return self._settle(call, outcome)
            time.sleep(self._delay(attempt))
            attempt += 1
            call.retried = True

    def enqueue_many(self, queue_type, jobs):
        """Store many jobs of one type, in order, 1,000 per request. Each job
        is a dict: queue_id, payload, interval, and optional job_id,
        requeue_limit, max_queued_length. Returns one result per job: an
        `Enqueued`, or the error (Duplicate, QueueFull, BadRequest...) that
        job met; the others are stored regardless."""
        results = []
        for chunk in _chunks(jobs):
            results.extend(self._send_call(self._enqueue_batch(queue_type, chunk)))
        return results

    def finish_many(self, queue_type, jobs):
        """Finish many jobs (Job objects or (queue_id, job_id) pairs); returns
        None for each finished job, else its error."""
        results = []
        for chunk in _chunks(jobs):
            results.extend(self._send_call(self._finish_batch(queue_type, chunk)))
        return results

    def iter_dead_letters(self, queue_type, page=100):
        """Every dead letter of a type, newest first, a page at a time."""
        offset = 0
        while True:
            batch = self.dead_letters(queue_type, offset, page)
            yield from batch.dead_letters
            offset += len(batch.dead_letters)
            if not batch.dead_letters or offset >= batch.total:
                return


class AsyncClient(_Api):
    """The asyncio twin of `Client`: the same methods, awaited."""

    def __init__(self, url=DEFAULT_URL, token=None, timeout=10.0, **options):
        super().__init__(url, token, timeout, **options)
        self._http = httpx.AsyncClient(transport=self._transport)

    async def aclose(self):
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def _send_call(self, call):
        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = await self._http.request(**self._request_args(call))
                outcome = self._read(call, response)
            except httpx.TransportError as e:
                outcome = self._connection_failed(call, e)
            if not self._should_retry(call, outcome, started):
                return self._settle(call, outcome)
            await asyncio.sleep(self._delay(attempt))
            attempt += 1
            call.retried = True

    async def enqueue_many(self, queue_type, jobs):
        results = []
        for chunk in _chunks(jobs):
            results.extend(await self._send_call(self._enqueue_batch(queue_type, chunk)))
        return results

    async def finish_many(self, queue_type, jobs):
        results = []
        for chunk in _chunks(jobs):
            results.extend(await self._send_call(self._finish_batch(queue_type, chunk)))
        return results
