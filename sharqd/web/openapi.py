"""
The OpenAPI 3.1 document of every route (GET /openapi.json), built here from
small pieces so that each answer's schema is written once.  tests/test_openapi.py
checks it against the routes the server has, and schemathesis checks the
server against it.
"""

import json

from sharqd import __version__
from sharqd.web import validation as v

IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,100}$",
              "minLength": 1, "maxLength": 100}
COUNT = {"type": "integer", "minimum": 0}
# a map from the start of each minute (epoch ms, as text) to a count
PER_MINUTE = {"type": "object", "additionalProperties": COUNT}


def _object(required=(), **properties):
    return {"type": "object", "required": list(required), "properties": properties}


def _const(value):
    return {"type": "string", "const": value}


FAILURE = _object(["status", "message"], status=_const("failure"),
                  message={"type": "string"})
SUCCESS = _object(["status"], status=_const("success"))
QUEUED = _object(["status"], status=_const("queued"), current_queue_length=COUNT)
FULL = _object(["status", "message", "current_queue_length"], status=_const("failure"),
               message={"type": "string"}, current_queue_length=COUNT)
BATCH_FAILURE = _object(["status", "message", "code"], status=_const("failure"),
                        message={"type": "string"}, code={"type": "integer"},
                        current_queue_length=COUNT)
LEASE_ID = {**IDENTIFIER, "description": "The id of this hand-out of the job."}
JOB_FIELDS = dict(queue_id=IDENTIFIER, job_id=IDENTIFIER, payload={},
                  requeues_remaining={"type": "integer", "minimum": -1},
                  lease_id=LEASE_ID)
JOB = _object(["status", "queue_id", "job_id", "payload", "requeues_remaining",
               "current_queue_length", "lease_id"], status=_const("success"),
              current_queue_length=COUNT, **JOB_FIELDS)
JOBS = _object(["status", "jobs"], status=_const("success"), jobs={
    "type": "array", "items": _object(list(JOB_FIELDS), **JOB_FIELDS)})
DEAD_LETTER = _object(
    ["queue_id", "job_id", "requeue_limit", "requeues_spent", "interval", "failed_at",
     "reason", "payload"], queue_id=IDENTIFIER, job_id=IDENTIFIER,
    requeue_limit={"type": "integer"}, requeues_spent=COUNT, interval=COUNT,
    failed_at=COUNT, reason={"type": "string"}, payload={})
TOTALS = _object(["enqueued", "dequeued", "finished", "requeued", "dead_lettered",
                  "rejected_duplicate", "rejected_max_queued_length"],
                 **{name: COUNT for name in (
                     "enqueued", "dequeued", "finished", "requeued", "dead_lettered",
                     "rejected_duplicate", "rejected_max_queued_length")})
TYPE_STATS = _object(
    ["queue_type", "pending", "active", "ready_queues", "dead_letters",
     "oldest_ready_age_seconds", "totals"], queue_type=IDENTIFIER, pending=COUNT,
    active=COUNT, ready_queues=COUNT, dead_letters=COUNT,
    oldest_ready_age_seconds={"type": "number", "minimum": 0}, totals=TOTALS)
QUEUE_ROW = _object(["queue_id", "pending", "active", "interval", "ready_at"],
                    queue_id=IDENTIFIER, pending=COUNT, active=COUNT, interval=COUNT,
                    ready_at={"type": ["integer", "null"]})

ENQUEUE_BODY = _object(
    ["job_id", "interval", "payload"], job_id=IDENTIFIER,
    interval={"type": "integer", "minimum": 0, "maximum": v.MAX_INTERVAL},
    payload={"description": "Any JSON value, handed back exactly as given."},
    requeue_limit={"type": "integer", "minimum": -1, "maximum": v.MAX_REQUEUE_LIMIT},
    max_queued_length={"type": "integer", "minimum": 0, "maximum": v.MAX_QUEUED_LENGTH})
BATCH_ENQUEUE_JOB = {**ENQUEUE_BODY, "required": ["queue_id"] + ENQUEUE_BODY["required"],
                     "properties": {"queue_id": IDENTIFIER, **ENQUEUE_BODY["properties"]}}
BATCH_FINISH_JOB = _object(["queue_id", "job_id"], queue_id=IDENTIFIER, job_id=IDENTIFIER,
                           lease_id=LEASE_ID)
NULLABLE_NUMBER = {"type": ["number", "null"]}
POLICY_BODY = {**_object(
    [], rate={"type": ["number", "null"], "minimum": v.MIN_RATE, "maximum": v.MAX_RATE},
    burst={"type": ["integer", "null"], "minimum": 1, "maximum": v.MAX_BURST},
    max_active={"type": ["integer", "null"], "minimum": 1, "maximum": v.MAX_ACTIVE},
    paused={"type": ["boolean", "null"]}), "additionalProperties": False}
POLICY = _object(["status", "rate", "burst", "max_active", "paused"],
                 status=_const("success"), rate={"type": ["number", "null"]},
                 burst={"type": ["integer", "null"]},
                 max_active={"type": ["integer", "null"]},
                 paused={"type": ["boolean", "null"]})
SOURCE = {"enum": ["queue", "type", None]}
EXPLAIN = _object(
    ["status", "queue_type", "queue_id", "pending", "active", "policy", "policy_source",
     "policy_sources", "limited_by", "type_paused", "tokens", "ready", "reason",
     "next_ready_at", "now"], status=_const("success"), queue_type=IDENTIFIER,
    queue_id=IDENTIFIER, pending=COUNT, active=COUNT,
    policy=_object(["rate", "burst", "max_active", "paused", "interval"],
                   rate={"type": ["number", "null"]}, burst={"type": ["integer", "null"]},
                   max_active={"type": ["integer", "null"]},
                   paused={"type": ["boolean", "null"]}, interval=COUNT),
    policy_source={"enum": ["queue", "type", "interval"]},
    policy_sources=_object([], rate=SOURCE, max_active=SOURCE, paused=SOURCE),
    limited_by={"enum": ["rate", "interval"]}, type_paused={"type": "boolean"},
    tokens=COUNT, ready={"type": "boolean"},
    reason={"enum": ["type_paused", "paused", "empty", "max_active", "rate", "interval",
                     None]},
    next_ready_at={"type": ["integer", "null"]}, now={"type": "integer"})
LEASE_ARG = {"name": "lease_id", "in": "query", "required": False, "schema": LEASE_ID,
             "description": "Only if this is the job's current lease (else 409)."}


def _batch(job):
    return _object(["jobs"], jobs={"type": "array", "minItems": 1,
                                   "maxItems": v.MAX_BATCH, "items": job})


def _json(description, schema):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _fail(description):
    return _json(description, FAILURE)


BAD = _fail("Invalid input: the message names the field.")
UNAVAILABLE = _fail("Redis is not reachable or not answering; try again shortly.")
TOO_LARGE = _fail("The body is larger than `max_request_size`.")


def _path(*names):
    return [{"name": n, "in": "path", "required": True, "schema": IDENTIFIER}
            for n in names]


def _query(name, schema, description):
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _op(summary, responses, params=(), body=None, redis=True, tag="queue"):
    """One operation; every one may answer 400 when it takes input and 503
    when it needs Redis, and 413 when it takes a body."""
    responses = dict(responses)
    if params or body:
        responses.setdefault("400", BAD)
    if body:
        responses.setdefault("413", TOO_LARGE)
    if redis:
        responses.setdefault("503", UNAVAILABLE)
    op = {"summary": summary, "tags": [tag], "parameters": list(params),
          "responses": {code: responses[code] for code in sorted(responses)}}
    if body is not None:
        op["requestBody"] = {"required": body.get("required") is not None and
                             bool(body["required"]),
                             "content": {"application/json": {"schema": body}}}
    return op


DEQUEUE_ARGS = [
    _query("wait", {"type": "number", "exclusiveMinimum": 0,
                    "maximum": v.MAX_WAIT_SECONDS},
           "Long-poll: wait up to this many seconds for a job."),
    _query("count", {"type": "integer", "minimum": 1, "maximum": v.MAX_COUNT},
           "Answer up to this many jobs at once (as `jobs`)."),
    _query("lease", {"type": "integer", "minimum": 1, "maximum": v.MAX_LEASE},
           "Milliseconds the worker has to finish the jobs."),
]
DEQUEUE_RESPONSES = {
    "200": _json("A job (or, with `count`, up to `count` jobs).",
                 {"anyOf": [JOB, JOBS]}),
    "404": _fail("No job of the type is ready (within `wait`), or the type is paused."),
}
COUNTS = dict(enqueue_counts=PER_MINUTE, dequeue_counts=PER_MINUTE,
              dead_letter_counts=PER_MINUTE)
NO_QUEUE = _fail("No such queue.")
NOT_ACTIVE = _fail("The job is not active.")
NOT_DEAD = _fail("No such dead letter.")
DUPLICATE = _fail("The job id is already pending or active in the queue.")
ENDED = _fail("The `lease_id` given is not the job's current lease.")
NO_POLICY = _fail("No such policy.")
PAUSE = _object(["status", "paused", "changed"], status=_const("success"),
                paused={"type": "boolean"}, changed={"type": "boolean"})
TEXT = {"type": "string"}

def _policy_ops(*names):
    """PUT, GET and DELETE of a queue's policy or (one name) a type's default."""
    what = "a queue's policy" if len(names) == 2 else "a queue type's default policy"
    return {
        "put": _op(f"Set {what}", {"200": _json("The stored policy.", POLICY)},
                   _path(*names), POLICY_BODY, tag="policy"),
        "get": _op(f"Read {what}", {"200": _json("The stored policy.", POLICY),
                                    "404": NO_POLICY}, _path(*names), tag="policy"),
        "delete": _op(f"Drop {what}", {"200": _json("Dropped.", SUCCESS),
                                       "404": NO_POLICY}, _path(*names), tag="policy"),
    }


PATHS = {
    "/": {"get": _op("Greeting (the process is up)", {
        "200": _json("Hello.", _object(["message"], message={"type": "string"}))},
        redis=False, tag="health")},
    "/enqueue/{queue_type}/{queue_id}/": {"post": _op("Enqueue a job", {
        "201": _json("Stored.", QUEUED), "409": DUPLICATE,
        "429": _json("The queue holds `max_queued_length` jobs already.", FULL)},
        _path("queue_type", "queue_id"), ENQUEUE_BODY)},
    "/dequeue/": {"get": _op("Dequeue a job of the type `default`", DEQUEUE_RESPONSES,
                             DEQUEUE_ARGS)},
    "/dequeue/{queue_type}/": {"get": _op("Dequeue the next ready job of a type",
                                          DEQUEUE_RESPONSES,
                                          _path("queue_type") + DEQUEUE_ARGS)},
    "/finish/{queue_type}/{queue_id}/{job_id}/": {"post": _op(
        "Finish an active job", {"200": _json("Finished.", SUCCESS), "404": NOT_ACTIVE,
                                 "409": ENDED},
        _path("queue_type", "queue_id", "job_id") + [LEASE_ARG],
        {**_object([], lease_id=LEASE_ID),
         "description": "Optional; a body that is not a JSON object is ignored."})},
    "/interval/{queue_type}/{queue_id}/": {"post": _op(
        "Set a queue's interval", {"200": _json("Set.", SUCCESS), "404": NO_QUEUE},
        _path("queue_type", "queue_id"),
        _object(["interval"], interval=ENQUEUE_BODY["properties"]["interval"]))},
    "/metrics/": {"get": _op("Queue types and per-minute counts", {"200": _json(
        "Counts of the last 10 minutes.",
        _object(["status", "queue_types", *COUNTS, "finish_counts"],
                status=_const("success"),
                queue_types={"type": "array", "items": IDENTIFIER},
                finish_counts=PER_MINUTE, **COUNTS))}, tag="metrics")},
    "/metrics/{queue_type}/": {"get": _op("Queue ids of a type, a page at a time", {
        "200": _json(
            "A page of the ids with pending or active jobs, and how many there are.",
            _object(["status", "queue_ids", "dead_letter_length", "total", "offset",
                     "limit"], status=_const("success"),
                    queue_ids={"type": "array", "items": IDENTIFIER},
                    dead_letter_length=COUNT, total=COUNT, offset=COUNT,
                    limit={"type": "integer", "minimum": 1}))},
        _path("queue_type") + [
            _query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9},
                   "Queue ids to skip."),
            _query("limit", {"type": "integer", "minimum": 1,
                             "maximum": v.MAX_QUEUE_ID_PAGE},
                   "Page size (default 1000).")], tag="metrics")},
    "/metrics/{queue_type}/{queue_id}/": {"get": _op("A queue's length and counts", {
        "200": _json("Pending jobs and counts of the last 10 minutes.", _object(
            ["status", "queue_length", *COUNTS], status=_const("success"),
            queue_length=COUNT, **COUNTS))},
        _path("queue_type", "queue_id"), tag="metrics")},
    "/deletequeue/{queue_type}/{queue_id}/": {"delete": _op("Delete a queue", {
        "200": _json("Deleted.", _object(["status", "message"], status=_const("success"),
                                         message={"type": "string"})),
        "404": NO_QUEUE}, _path("queue_type", "queue_id"),
        _object([], purge_all={"type": "boolean"}))},
    "/deepstatus/": {"get": _op("Redis answers", {"200": _json("Redis answers.", SUCCESS)},
                                tag="health")},
    "/enqueue/{queue_type}/": {"post": _op("Enqueue 1 to 1,000 jobs", {"201": _json(
        "One result per job, in order.", _object(
            ["status", "results"], status=_const("queued"), results={
                "type": "array", "items": {"anyOf": [QUEUED, BATCH_FAILURE]}}))},
        _path("queue_type"), _batch(BATCH_ENQUEUE_JOB))},
    "/finish/{queue_type}/": {"post": _op("Finish 1 to 1,000 jobs", {"200": _json(
        "One result per job, in order.", _object(
            ["status", "results"], status=_const("success"), results={
                "type": "array", "items": {"anyOf": [SUCCESS, BATCH_FAILURE]}}))},
        _path("queue_type"), _batch(BATCH_FINISH_JOB))},
    "/touch/{queue_type}/{queue_id}/{job_id}/": {"post": _op("Extend a job's lease", {
        "200": _json("The new deadline (epoch ms).", _object(
            ["status", "lease", "deadline"], status=_const("success"),
            lease={"type": "integer"}, deadline={"type": "integer"})),
        "404": NOT_ACTIVE, "409": ENDED}, _path("queue_type", "queue_id", "job_id") + [LEASE_ARG],
        _object([], lease=DEQUEUE_ARGS[2]["schema"], lease_id=LEASE_ID))},
    "/deadletters/{queue_type}/": {
        "get": _op("List dead letters, newest first", {"200": _json("A page.", _object(
            ["status", "total", "offset", "limit", "dead_letters"],
            status=_const("success"), total=COUNT, offset=COUNT,
            limit={"type": "integer", "minimum": 1},
            dead_letters={"type": "array", "items": DEAD_LETTER}))},
            _path("queue_type") + [
                _query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9},
                       "Dead letters to skip."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": v.MAX_PAGE},
                       "Page size (default 100).")], tag="dead letters"),
        "delete": _op("Purge the dead letters of a type", {"200": _json(
            "How many were deleted.", _object(["status", "deleted"], status=_const(
                "success"), deleted=COUNT))}, _path("queue_type"), tag="dead letters")},
    "/deadletters/{queue_type}/{queue_id}/{job_id}/": {"delete": _op(
        "Delete a dead letter", {"200": _json("Deleted.", _object(
            ["status", "deleted"], status=_const("success"), deleted=COUNT)),
            "404": NOT_DEAD}, _path("queue_type", "queue_id", "job_id"),
        tag="dead letters")},
    "/deadletters/{queue_type}/{queue_id}/{job_id}/retry/": {"post": _op(
        "Put a dead letter back into its queue", {
            "201": _json("Queued again.", _object(["status"], status=_const("queued"))),
            "404": NOT_DEAD, "409": DUPLICATE},
        _path("queue_type", "queue_id", "job_id"), tag="dead letters")},
    "/policy/{queue_type}/{queue_id}/": _policy_ops("queue_type", "queue_id"),
    "/policy/{queue_type}/": _policy_ops("queue_type"),
    "/pause/{queue_type}/": {"post": _op("Pause a queue type", {
        "200": _json("Paused.", PAUSE)}, _path("queue_type"), tag="policy")},
    "/resume/{queue_type}/": {"post": _op("Resume a queue type", {
        "200": _json("Resumed.", PAUSE)}, _path("queue_type"), tag="policy")},
    "/queues/{queue_type}/{queue_id}/": {"get": _op(
        "Explain a queue: its state, its policy, why it is not ready", {
            "200": _json("The queue's state.", EXPLAIN)},
        _path("queue_type", "queue_id"), tag="policy")},
    "/prometheus": {"get": _op("Prometheus metrics", {"200": {
        "description": "The text exposition format (OpenMetrics when asked for).",
        "content": {"text/plain": {"schema": TEXT},
                    "application/openmetrics-text": {"schema": TEXT}}}},
        [_query("fresh", {"type": "integer", "enum": [0, 1]},
                "1: read the queue figures from Redis now, instead of the snapshot "
                "read in the background since the last scrape.")],
        tag="observability")},
    "/queues/": {"get": _op("Figures of every queue type", {"200": _json(
        "Per type: jobs pending, active, ready queues, dead letters, totals.",
        _object(["status", "queue_types"], status=_const("success"),
                queue_types={"type": "array", "items": TYPE_STATS}))},
        tag="observability")},
    "/queues/{queue_type}/": {"get": _op("The queues of a type, busiest first", {
        "200": _json("Most pending first.", _object(
            ["status", "queue_type", "sort", "limit", "queues"], status=_const("success"),
            queue_type=IDENTIFIER, sort={"type": "string", "enum": ["pending", "queue_id"]},
            limit={"type": "integer", "minimum": 1},
            queues={"type": "array", "items": QUEUE_ROW}))},
        _path("queue_type") + [
            _query("sort", {"type": "string", "enum": ["pending", "queue_id"]},
                   "Order: `pending` (most first, the default) or `queue_id`."),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": v.MAX_PAGE},
                   "How many queues (default 50).")], tag="observability")},
    "/health/": {"get": _op("Server health for the dashboard", {"200": _json(
        "Version, workers, and whether Redis answers.", _object(
            ["status", "version", "workers", "uptime_seconds", "redis"],
            status=_const("success"), version=TEXT, workers={"type": "integer"},
            uptime_seconds={"type": "number"}, redis=_object(
                ["address", "reachable"], address=TEXT, reachable={"type": "boolean"},
                version=TEXT, message=TEXT)))}, redis=False, tag="health")},
    "/openapi.json": {"get": _op("This document", {"200": _json(
        "OpenAPI 3.1.", {"type": "object"})}, redis=False, tag="observability")},
    "/dashboard/": {"get": _op("The dashboard", {"200": {
        "description": "The dashboard page.",
        "content": {"text/html": {"schema": TEXT}}}}, redis=False, tag="observability")},
    "/dashboard/{name}": {"get": _op("A file of the dashboard", {
        "200": {"description": "The file.", "content": {
            "text/javascript": {"schema": TEXT}, "text/css": {"schema": TEXT},
            "text/html": {"schema": TEXT}}},
        "404": _fail("No such file.")},
        [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        redis=False, tag="observability")},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "sharqd", "version": __version__,
             "description": "The SharQ Server API and sharqd's extensions: "
                            "a rate-limited job queue over Redis.",
             "license": {"name": "MIT", "identifier": "MIT"}},
    "paths": PATHS,
}
DOCUMENT_JSON = json.dumps(DOCUMENT, indent=1).encode()
