"""
The HTTP API of the SharQ Server as a Klein app: parse, call the queue,
answer JSON.  No Redis here.
"""

import inspect
import json
import re
import time

from klein import Klein
from twisted.internet.defer import ensureDeferred, fail
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from sharqd import __version__
from sharqd.web import dashboard, openapi, validation
from sharqd.web.prometheus import Exposition, ProcessMetrics, accepts_gzip
from sharqd.errors import BadRequest, NotFound, SharqError
from sharqd.queue.waiters import Waiters

JSON = b"application/json"
DEFAULT_TYPE = "default"


def answer(request, status, body):
    """Write a JSON answer: body is a dict or already encoded JSON bytes."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return body


def _metrics(fields, counts):
    """A metrics answer: the fields, then the per-minute counts."""
    def per_minute(values):
        return {str(m): n for m, n in zip(counts.minutes, values)}
    return {"status": "success", **fields,
            "enqueue_counts": per_minute(counts.enqueued),
            "dequeue_counts": per_minute(counts.dequeued),
            "dead_letter_counts": per_minute(counts.dead)}


def _queued(length, request, max_length):
    if max_length is None:
        return answer(request, 201, b'{"status": "queued"}')
    # as in the original: the length the check saw, before this job
    return answer(request, 201, {"status": "queued", "current_queue_length": length - 1})


def _job(job, request, queue_type):
    if job is None:
        return answer(request, 404, {
            "status": "failure", "message": f"No job of type `{queue_type}` is ready."})
    # the stored payload is JSON text: splice it in rather than decode it
    return answer(request, 200, b'{"status": "success", "queue_id": "%s", '
                  b'"job_id": "%s", "payload": %s, "requeues_remaining": %d, '
                  b'"current_queue_length": %d, "lease_id": "%s"}' % (
                      job.queue_id.encode(), job.job_id.encode(), job.payload,
                      job.requeues_remaining, job.current_queue_length,
                      job.lease_id.encode()))


def _first(result):
    return result[0]


def _jobs(jobs, request, queue_type, many):
    """The answer of a dequeue with options: the plain dequeue's answers
    without ?count=, else the list of jobs."""
    if not many or not jobs:
        return _job(jobs[0] if jobs else None, request, queue_type)
    return answer(request, 200, b'{"status": "success", "jobs": [%s]}' % b", ".join(
        b'{"queue_id": "%s", "job_id": "%s", "payload": %s, '
        b'"requeues_remaining": %d, "lease_id": "%s"}' % (
            job.queue_id.encode(), job.job_id.encode(), job.payload,
            job.requeues_remaining, job.lease_id.encode()) for job in jobs))


def _policy_json(policy):
    """A stored policy as answered: burst 1 when a rate has none."""
    body = policy.as_dict()
    if policy.rate is not None and policy.burst is None:
        body["burst"] = 1
    return body


def hot(handler):
    """Mark a route as hot: served by _HotPath without Klein's routing.
    Only for routes of one literal first segment followed by plain
    `<name>` segments, whose handler returns a Deferred."""
    handler.hot = True
    return handler


class Api:
    app = Klein()
    # "//" in a path is an empty identifier, not a slash to merge (werkzeug's
    # merging would redirect such a path to itself)
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(self, queue, default_requeue_limit=-1, waiters=None,
                 exposition=None, workers=1, redis_address=""):
        self.queue = queue
        self.default_requeue_limit = default_requeue_limit
        from twisted.internet import reactor
        if waiters is None:  # no notifications: long-poll re-checks every second
            waiters = Waiters(queue, reactor)
        self.waiters = waiters
        if exposition is None:
            exposition = Exposition(ProcessMetrics(waiters.waiting), reactor)
        self.exposition = exposition
        self.workers = workers
        self.redis_address = redis_address
        self.started = time.time()
        self._rules = self.app.url_map.bind("sharqd")

    def route_of(self, request):
        """The route template a request was answered by (a metrics label):
        the hot path says so itself; others are matched again, which only
        Klein's routes pay for.  Unknown routes are all "other"."""
        if request.route is not None:
            return request.route
        try:
            rule, _ = self._rules.match(request.path.decode("utf-8"),
                                        request.method.decode("latin-1"),
                                        return_rule=True)
        except (HTTPException, RequestRedirect, UnicodeDecodeError):
            return "other"
        return rule.rule

    def resource(self):
        return _HotPath(self, self.app.resource())

    # ---- errors: werkzeug's first so redirects, 404 and 405 keep their codes

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure):
        error = failure.value
        if isinstance(error, RequestRedirect):
            request.setHeader(b"location", error.new_url.encode())
            message = f"This resource lives at {error.new_url}"
        elif isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            request.setHeader(b"allow", allowed.encode())
            message = (f"Method {request.method.decode('latin-1')} is not allowed "
                       f"here; use {allowed}.")
        elif error.code == 404:
            message = f"No such route: {request.path.decode('latin-1')}"
        else:
            message = error.description
        return answer(request, error.code, {"status": "failure", "message": message})

    @app.handle_errors(Exception)
    def error(self, request, failure):
        """Domain errors answer their status and message; anything else is a
        500 with the detail in the log only."""
        if failure.check(SharqError):
            for name, value in failure.value.headers.items():
                request.setHeader(name, value)
            return answer(request, failure.value.status, failure.value.body())
        self.log.failure("Unexpected error answering {method} {path}", failure,
                         method=request.method, path=request.path)
        return answer(request, 500, {"status": "failure",
                                     "message": "Internal server error; see the server log."})

    # ---- routes

    @app.route("/", methods=["GET"])
    def index(self, request):
        return answer(request, 200, {"message": "Hello, SharQ!"})

    # enqueue, dequeue and finish are the hot path (@hot, see _HotPath):
    # they return Deferreds with plain callbacks rather than coroutines,
    # which cost more

    @app.route("/enqueue/<queue_type>/<queue_id>/", methods=["POST"])
    @hot
    def enqueue(self, request, queue_type, queue_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id)
        body = validation.json_body(request.content.read())
        job_id, interval, payload, limit, max_length = validation.enqueue_fields(
            body, self.default_requeue_limit)
        d = self.queue.enqueue(queue_type, queue_id, job_id, interval,
                               validation.encode_payload(payload), limit, max_length)
        return d.addCallback(_queued, request, max_length)

    @app.route("/dequeue/", methods=["GET"])
    def dequeue_default(self, request):
        return self.dequeue(request, DEFAULT_TYPE)

    @app.route("/dequeue/<queue_type>/", methods=["GET"])
    @hot
    def dequeue(self, request, queue_type):
        if request.method == b"HEAD":  # werkzeug adds HEAD to every GET route
            raise MethodNotAllowed(valid_methods=["GET"])
        validation.identifier("queue_type", queue_type)
        if request.args:  # ?wait= ?count= ?lease=: see dequeue_with_options
            return self.dequeue_with_options(request, queue_type)
        return self.queue.dequeue(queue_type).addCallback(_job, request, queue_type)

    @app.route("/finish/<queue_type>/<queue_id>/<job_id>/", methods=["POST"])
    @hot
    def finish(self, request, queue_type, queue_id, job_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id, job_id=job_id)
        lease_id = validation.finish_lease_id(request.args, request.content.read())
        d = self.queue.finish(queue_type, queue_id, job_id, lease_id)
        return d.addCallback(lambda _: answer(request, 200, b'{"status": "success"}'))

    @app.route("/interval/<queue_type>/<queue_id>/", methods=["POST"])
    async def interval(self, request, queue_type, queue_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id)
        interval = validation.interval_field(validation.json_body(request.content.read()))
        await self.queue.set_interval(queue_type, queue_id, interval)
        return answer(request, 200, {"status": "success"})

    @app.route("/metrics/", methods=["GET"])
    async def metrics(self, request):
        types, counts = await self.queue.global_metrics()
        body = _metrics({"queue_types": types}, counts)
        body["finish_counts"] = {str(m): n for m, n in zip(counts.minutes, counts.finished)}
        return answer(request, 200, body)

    @app.route("/metrics/<queue_type>/", methods=["GET"])
    async def type_metrics(self, request, queue_type):
        """One page of the type's queue ids (?offset=&limit=, default the
        first QUEUE_ID_PAGE): as the original's answer, plus the total and
        the page's bounds."""
        validation.identifier("queue_type", queue_type)
        offset, limit = _page(request, QUEUE_ID_PAGE, validation.queue_id_limit_arg)
        total, ids = await self.queue.queue_id_page(queue_type, offset, limit)
        dead = await self.queue.dead_letter_length(queue_type)
        return answer(request, 200, {"status": "success", "queue_ids": sorted(ids),
                                     "dead_letter_length": dead, "total": total,
                                     "offset": offset, "limit": limit})

    @app.route("/metrics/<queue_type>/<queue_id>/", methods=["GET"])
    async def queue_metrics(self, request, queue_type, queue_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id)
        length, counts = await self.queue.queue_metrics(queue_type, queue_id)
        return answer(request, 200, _metrics({"queue_length": length}, counts))

    @app.route("/deletequeue/<queue_type>/<queue_id>/", methods=["DELETE"])
    async def delete_queue(self, request, queue_type, queue_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id)
        purge_all = validation.purge_all_field(validation.json_body(request.content.read()))
        await self.queue.delete_queue(queue_type, queue_id, purge_all)
        return answer(request, 200, {"status": "success",
                                     "message": f"Queue `{queue_type}/{queue_id}` deleted."})

    @app.route("/deepstatus/", methods=["GET"])
    async def deepstatus(self, request):
        await self.queue.ping()
        return answer(request, 200, {"status": "success"})

    # ---- observability: Prometheus, dashboard, OpenAPI (README, "Observability")

    @app.route("/prometheus", methods=["GET"])
    async def prometheus(self, request):
        # without Redis the scrape still answers this process's metrics
        # (its Redis errors among them), with sharqd_redis_up 0
        fresh = validation.fresh_arg(validation.query_arg(request.args, "fresh"))
        accept = request.getHeader(b"accept")
        # Prometheus asks for gzip: a tenth of the bytes to send
        gzip = accepts_gzip((request.getHeader(b"accept-encoding") or b"").decode("latin-1"))
        content_type, parts = await self.exposition.scrape(
            self.queue, accept.decode("latin-1") if accept else "", fresh, gzip)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"vary", b"Accept-Encoding")
        if gzip:
            request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-length", b"%d" % sum(map(len, parts)))
        await self.exposition.send(request.write, parts)
        return b""

    @app.route("/queues/", methods=["GET"])
    async def queue_types(self, request):
        stats = await self.queue.all_type_stats()
        return answer(request, 200, {"status": "success", "queue_types": [
            _type_stats(s) for s in stats]})

    @app.route("/queues/<queue_type>/", methods=["GET"])
    async def top_queues(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        sort = validation.query_arg(request.args, "sort")
        limit = validation.query_arg(request.args, "limit")
        sort = validation.sort_arg(sort)
        limit = TOP_QUEUES if limit is None else validation.limit_arg(limit)
        rows = await self.queue.top_queues(queue_type, limit, sort=sort)
        return answer(request, 200, {
            "status": "success", "queue_type": queue_type, "sort": sort,
            "limit": limit, "queues": [
                {"queue_id": r.queue_id, "pending": r.pending, "active": r.active,
                 "interval": r.interval, "ready_at": r.ready_at} for r in rows]})

    @app.route("/health/", methods=["GET"])
    async def health(self, request):
        body = {"status": "success", "version": __version__, "workers": self.workers,
                "uptime_seconds": round(time.time() - self.started, 3),
                "redis": {"address": self.redis_address, "reachable": True}}
        try:
            body["redis"]["version"] = await self.queue.redis_version()
        except SharqError as e:  # the dashboard shows it: no 503 here
            body["redis"].update(reachable=False, message=e.message)
        return answer(request, 200, body)

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document(self, request):
        return answer(request, 200, openapi.DOCUMENT_JSON)

    @app.route("/dashboard/", methods=["GET"])
    def dashboard_page(self, request):
        return self.dashboard_file(request, "index.html")

    @app.route("/dashboard/<name>", methods=["GET"])
    def dashboard_file(self, request, name):
        content_type, body = dashboard.asset(name)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return body

    # ---- API extensions: long-poll, batches, leases, dead letters
    # (README, "API extensions")

    def dequeue_with_options(self, request, queue_type):
        """GET /dequeue/<queue_type>/?wait=S&count=N&lease=MS"""
        args = request.args
        wait = validation.query_arg(args, "wait")
        count = validation.query_arg(args, "count")
        lease = validation.query_arg(args, "lease")
        wait = None if wait is None else validation.wait_arg(wait)
        many = count is not None
        count = validation.count_arg(count) if many else 1
        lease = None if lease is None else validation.lease_arg(lease)
        if wait is None:
            d = ensureDeferred(self.queue.dequeue_many(queue_type, count, lease))
            d.addCallback(_first)
        else:
            # cancelled when the client hangs up, and so the wait
            d = self.waiters.wait(queue_type, count, lease, wait)
            d.addCallback(self._hold_next, request, queue_type)
        return d.addCallback(_jobs, request, queue_type, many)

    def _hold_next(self, jobs, request, queue_type):
        """In a burst, this client's next request is read once the burst is
        over (Waiters.settled): the clients behind it are answered first."""
        if jobs:
            request.read_next_after = self.waiters.settled(queue_type)
        return jobs

    @app.route("/enqueue/<queue_type>/", methods=["POST"])
    async def enqueue_batch(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        jobs = validation.jobs_field(validation.json_body(request.content.read()))
        results, valid, where = _check_each(
            jobs, lambda job: validation.batch_enqueue_job(job, self.default_requeue_limit))
        if valid:
            stored = await self.queue.enqueue_many(queue_type, valid)
            for i, job, outcome in zip(where, valid, stored):
                if isinstance(outcome, SharqError):
                    results[i] = _failure(outcome)
                elif job.max_queued_length is None:
                    results[i] = _QUEUED
                else:  # as the single route: the length the check saw
                    results[i] = {"status": "queued", "current_queue_length": outcome - 1}
        return answer(request, 201, b'{"status": "queued", "results": [%s]}' % b", ".join(
            _QUEUED_JSON if r is _QUEUED else json.dumps(r).encode() for r in results))

    @app.route("/finish/<queue_type>/", methods=["POST"])
    async def finish_batch(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        jobs = validation.jobs_field(validation.json_body(request.content.read()))
        results, valid, where = _check_each(jobs, validation.batch_finish_job)
        if valid:
            done = await self.queue.finish_many(queue_type, valid)
            for i, outcome in zip(where, done):
                results[i] = _SUCCESS if outcome is None else _failure(outcome)
        return answer(request, 200, {"status": "success", "results": results})

    @app.route("/touch/<queue_type>/<queue_id>/<job_id>/", methods=["POST"])
    async def touch(self, request, queue_type, queue_id, job_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id, job_id=job_id)
        body = validation.json_body(request.content.read())
        lease = validation.lease_field(body) or self.queue.job_expire_interval
        lease_id = validation.query_arg(request.args, "lease_id")
        lease_id = (validation.lease_id_field(body) if lease_id is None
                    else validation.lease_id(lease_id))
        deadline = await self.queue.touch(queue_type, queue_id, job_id, lease, lease_id)
        return answer(request, 200, {"status": "success", "lease": lease,
                                     "deadline": deadline})

    @app.route("/deadletters/<queue_type>/", methods=["GET"])
    async def dead_letters(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        offset, limit = _page(request, DEAD_LETTER_PAGE, validation.limit_arg)
        total, entries = await self.queue.dead_letters(queue_type, offset, limit)
        # entries are JSON objects built by requeue.lua: splice them in
        return answer(request, 200, b'{"status": "success", "total": %d, "offset": %d, '
                      b'"limit": %d, "dead_letters": [%s]}' % (
                          total, offset, limit, b", ".join(entries)))

    @app.route("/deadletters/<queue_type>/", methods=["DELETE"])
    async def purge_dead_letters(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        deleted = await self.queue.purge_dead_letters(queue_type)
        return answer(request, 200, {"status": "success", "deleted": deleted})

    @app.route("/deadletters/<queue_type>/<queue_id>/<job_id>/", methods=["DELETE"])
    async def delete_dead_letter(self, request, queue_type, queue_id, job_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id, job_id=job_id)
        await self.queue.delete_dead_letter(queue_type, queue_id, job_id)
        return answer(request, 200, {"status": "success", "deleted": 1})

    @app.route("/deadletters/<queue_type>/<queue_id>/<job_id>/retry/", methods=["POST"])
    async def retry_dead_letter(self, request, queue_type, queue_id, job_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id, job_id=job_id)
        await self.queue.retry_dead_letter(queue_type, queue_id, job_id)
        return answer(request, 201, {"status": "queued"})

    # ---- rate policies, pause, explain (README "Rate policy")

    @app.route("/policy/<queue_type>/<queue_id>/", methods=["PUT"])
    async def put_policy(self, request, queue_type, queue_id=None):
        _policy_target(queue_type, queue_id)
        changes = validation.policy_fields(validation.json_body(request.content.read()))
        policy = await self.queue.put_policy(queue_type, queue_id, changes)
        return answer(request, 200, {"status": "success", **_policy_json(policy)})

    @app.route("/policy/<queue_type>/<queue_id>/", methods=["GET"])
    async def get_policy(self, request, queue_type, queue_id=None):
        _policy_target(queue_type, queue_id)
        policy = await self.queue.get_policy(queue_type, queue_id)
        if policy is None:
            raise _no_policy(queue_type, queue_id)
        return answer(request, 200, {"status": "success", **_policy_json(policy)})

    @app.route("/policy/<queue_type>/<queue_id>/", methods=["DELETE"])
    async def delete_policy(self, request, queue_type, queue_id=None):
        _policy_target(queue_type, queue_id)
        if not await self.queue.delete_policy(queue_type, queue_id):
            raise _no_policy(queue_type, queue_id)
        return answer(request, 200, {"status": "success"})

    @app.route("/policy/<queue_type>/", methods=["PUT"])
    def put_type_policy(self, request, queue_type):
        return self.put_policy(request, queue_type)

    @app.route("/policy/<queue_type>/", methods=["GET"])
    def get_type_policy(self, request, queue_type):
        return self.get_policy(request, queue_type)

    @app.route("/policy/<queue_type>/", methods=["DELETE"])
    def delete_type_policy(self, request, queue_type):
        return self.delete_policy(request, queue_type)

    @app.route("/pause/<queue_type>/", methods=["POST"])
    async def pause_type(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        changed = await self.queue.pause_type(queue_type)
        return answer(request, 200, {"status": "success", "paused": True, "changed": changed})

    @app.route("/resume/<queue_type>/", methods=["POST"])
    async def resume_type(self, request, queue_type):
        validation.identifier("queue_type", queue_type)
        changed = await self.queue.resume_type(queue_type)
        return answer(request, 200, {"status": "success", "paused": False, "changed": changed})

    @app.route("/queues/<queue_type>/<queue_id>/", methods=["GET"])
    async def explain(self, request, queue_type, queue_id):
        validation.identifiers(queue_type=queue_type, queue_id=queue_id)
        e = await self.queue.explain(queue_type, queue_id)
        policy = _policy_json(e.policy)
        policy["interval"] = e.interval
        return answer(request, 200, {
            "status": "success", "queue_type": queue_type, "queue_id": queue_id,
            "pending": e.pending, "active": e.active,
            "policy": policy, "policy_source": e.source, "policy_sources": e.sources,
            "limited_by": "rate" if e.policy.rate is not None else "interval",
            "type_paused": e.type_paused, "tokens": e.tokens,
            "ready": e.reason is None, "reason": e.reason,
            "next_ready_at": e.next_ready_at, "now": e.now})


def _no_policy(queue_type, queue_id):
    if queue_id is None:
        return NotFound(f"Queue type `{queue_type}` has no default policy; set one with "
                        f"PUT /policy/{queue_type}/.")
    return NotFound(f"Queue `{queue_type}/{queue_id}` has no policy of its own; "
                    f"GET /queues/{queue_type}/{queue_id}/ shows the one in force.")


def _page(request, default_limit, limit_arg):
    """(offset, limit) of a paged route: ?offset= (default 0) and ?limit=
    (default default_limit, checked by limit_arg)."""
    offset = validation.query_arg(request.args, "offset")
    limit = validation.query_arg(request.args, "limit")
    return (0 if offset is None else validation.offset_arg(offset),
            default_limit if limit is None else limit_arg(limit))


def _policy_target(queue_type, queue_id):
    """Check a policy route's type, and its queue_id (None: the type's
    default policy)."""
    validation.identifier("queue_type", queue_type)
    if queue_id is not None:
        validation.identifier("queue_id", queue_id)


DEAD_LETTER_PAGE = 100
QUEUE_ID_PAGE = 1000
TOP_QUEUES = 50


def _type_stats(s):
    return {"queue_type": s.queue_type, "pending": s.pending, "active": s.active,
            "ready_queues": s.ready_queues, "dead_letters": s.dead_letters,
            "oldest_ready_age_seconds": s.oldest_ready_age, "totals": s.totals}
_QUEUED = {"status": "queued"}
_QUEUED_JSON = b'{"status": "queued"}'
_SUCCESS = {"status": "success"}


def _check_each(jobs, check):
    """check(job) for each job of a batch: (results holding each invalid
    job's failure in its place, the checked jobs, their places)."""
    results, valid, where = [None] * len(jobs), [], []
    for i, job in enumerate(jobs):
        try:
            valid.append(check(job))
        except BadRequest as e:
            results[i] = _failure(e)
            continue
        where.append(i)
    return results, valid, where


def _failure(error):
    """One failed job of a batch: the single route's answer and its code."""
    return {**error.body(), "code": error.status}


_PLAIN_VARIABLE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def hot_routes(app):
    """
    The fast lookup of the hot routes, derived from the Klein app's route
    table: (method, first segment, number of "/"-separated parts) ->
    (endpoint, names of the path variables in order).  Raises ValueError
    for a hot route of another shape, or one that shares its key with any
    other route (werkzeug would have to choose between them).
    """
    routes, keys = {}, {}
    for rule in app.url_map.iter_rules():
        parts = rule.rule.split("/")
        for method in rule.methods:
            keys.setdefault((method.encode(), parts[1].encode(), len(parts)), []).append(rule)
    for rule in app.url_map.iter_rules():
        if not getattr(app.endpoints[rule.endpoint], "hot", False):
            continue
        parts = rule.rule.split("/")
        variables = [_PLAIN_VARIABLE.fullmatch(p) for p in parts[2:-1]]
        if parts[0] or parts[-1] or not parts[1] or not all(variables) \
                or "<" in parts[1]:
            raise ValueError(f"hot route {rule.rule} is not /literal/<name>/.../")
        names = tuple(v.group(1) for v in variables)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            key = (method.encode(), parts[1].encode(), len(parts))
            if len(keys[key]) > 1:
                raise ValueError(f"hot route {rule.rule} ({method}) shares its "
                                 f"shape with another route")
            routes[key] = (rule.endpoint, names)
    return routes


class _HotPath(Resource):
    """
    Serves the routes marked @hot (enqueue, dequeue, finish) without
    Klein's per-request routing: werkzeug's rule matching and Klein's URL
    rebuilding cost about a third of the CPU of these requests.  The lookup
    is built from the Klein app's own route table, and the handlers and the
    error mapping are the Api's own; any request that is not a plain match
    (other routes, methods, percent escapes, empty segments) goes to Klein
    unchanged.
    """

    isLeaf = True

    def __init__(self, api, klein_resource):
        super().__init__()
        self.api = api
        self.klein = klein_resource
        bound = api.app  # the Klein app bound to this Api
        # each with its route template, the requests' metrics label
        templates = {rule.endpoint: rule.rule for rule in bound.url_map.iter_rules()}
        self.routes = {key: (_handler(api, bound, endpoint, names), templates[endpoint])
                       for key, (endpoint, names) in hot_routes(bound).items()}

    def render(self, request):
        path = request.path
        parts = path.split(b"/")
        route = self.routes.get((request.method, parts[1], len(parts)))
        values = parts[2:-1]
        # (find, not `in`: see SharqRequest.process)
        if route is None or parts[-1] or not all(values) or path.find(b"%") >= 0 \
                or not path.isascii():
            return self.klein.render(request)
        handler, request.route = route
        try:
            d = handler(request, *[value.decode() for value in values])
        except Exception:
            d = fail()
        # the client hanging up cancels the work done for it, as Klein does
        # (SharqRequest.connectionLost; a plain twisted.web Request, as in
        # StubTreq's tests, has no such hook)
        request.working = d
        d.addCallbacks(_write, self._failed, (request,), None, (request,))
        return NOT_DONE_YET

    def _failed(self, failure, request):
        if not getattr(request, "gone", False):  # else nobody is left to tell
            _write(self.api.error(request, failure), request)


def _handler(api, app, endpoint, names):
    """The route function of a hot endpoint, bound to the Api, to be called
    with the path variables in order (Klein's own call goes through two
    wrappers and keyword arguments)."""
    function = inspect.unwrap(app.endpoints[endpoint])  # as written in Api
    parameters = tuple(inspect.signature(function).parameters)[2:]  # self, request
    if parameters != names:
        raise ValueError(f"hot route {endpoint}: its parameters {parameters} must "
                         f"be the path variables {names}, in order")
    return function.__get__(api)


def _write(body, request):
    if not getattr(request, "gone", False):
        request.working = None
        # with its length given, twisted.web sends the answer as it is
        # rather than as a chunk plus an end-of-body chunk
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
